#!/usr/bin/env bash
# Open the MLflow UI on skytrain's local store (runs, metrics, plots, registered models, aliases).
# Binds 127.0.0.1 unless MLFLOW_UI_HOST says otherwise; one worker keeps memory low.
set -euo pipefail
state_dir="${SKYTRAIN_STATE_DIR:-.skytrain}"
backend="${SKYTRAIN_MLFLOW_TRACKING_URI:-sqlite:///$(realpath -m "$state_dir")/mlflow.db}"
exec mlflow ui \
    --backend-store-uri "$backend" \
    --host "${MLFLOW_UI_HOST:-127.0.0.1}" \
    --port "${MLFLOW_UI_PORT:-5000}" \
    --workers 1
