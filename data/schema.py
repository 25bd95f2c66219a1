"""Column names and order shared by the raw data, the training pipelines and the server.

The models are fitted on plain numpy arrays in exactly this column order, so this module is the one
place that fixes it. Names match the protobuf field names in ``protos/prediction/v1``.
"""

from typing import Final

# scikit-learn's fetch_california_housing order: MedInc, HouseAge, AveRooms, AveBedrms, Population,
# AveOccup, Latitude, Longitude.
HOUSING_FEATURES: Final = (
    "median_income",
    "house_age",
    "average_rooms",
    "average_bedrooms",
    "population",
    "average_occupancy",
    "latitude",
    "longitude",
)
# Median house value in units of $100,000, as scikit-learn ships it.
HOUSING_TARGET: Final = "median_house_value"

# load_iris order: sepal length, sepal width, petal length, petal width (all in cm).
IRIS_FEATURES: Final = (
    "sepal_length_cm",
    "sepal_width_cm",
    "petal_length_cm",
    "petal_width_cm",
)
IRIS_TARGET: Final = "species"
# Class labels in the order of the model's classes_ (0, 1, 2) and of load_iris().target_names.
IRIS_SPECIES: Final = ("setosa", "versicolor", "virginica")
