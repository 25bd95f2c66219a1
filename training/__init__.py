"""Training pipelines that fit the scikit-learn models, log them to MLflow and gate the champion alias."""
