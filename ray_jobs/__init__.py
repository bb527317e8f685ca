"""Code that runs on Ray: models, the training loop, dataset reading. Never imports Prefect."""
