"""Data prep logic without Prefect: sources, validation rules, transforms, the version store."""
