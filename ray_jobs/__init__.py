"""Code that runs on Ray: models, the training loop, dataset reading. Never imports Prefect.

Importing it (every skytrain process does: flows, Ray workers, serving) turns MLflow's pickle
loading off unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set: a model version is then loaded
only from a ``torch.export`` archive whose every record MLflow verified to be tensors or plain
data (torch's ``weights_only`` unpickler), never from a pickled module, and a tampered archive is
refused before it is opened. MLflow's own default (on) would unpickle whatever a version holds.
"""

import os

os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
