"""gRPC prediction server: typed HousingPredictor and IrisClassifier services over MLflow-registered models."""
