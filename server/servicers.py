"""gRPC adapters: convert the request, delegate to the core, convert the answer back. Nothing else.

Errors propagate as domain exceptions; ``server.grpc_errors`` turns them into statuses.
"""

import grpc

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server import converters
from server.core import HousingEndpoint, IrisEndpoint, ModelEndpoint


def _model_info(endpoint: ModelEndpoint) -> model_pb2.ModelInfo:
    return converters.model_info_to_proto(endpoint.describe(), endpoint.features, endpoint.max_batch_size)


class HousingPredictorServicer(housing_pb2_grpc.HousingPredictorServicer):
    def __init__(self, endpoint: HousingEndpoint) -> None:
        self._endpoint = endpoint

    def Predict(  # noqa: N802 - names come from the proto
        self, request: housing_pb2.HousingFeatures, context: grpc.ServicerContext
    ) -> housing_pb2.HousingPrediction:
        batch = converters.features_to_batch((request,), self._endpoint.features, is_batch=False)
        return converters.housing_prediction_to_proto(self._endpoint.predict(batch))

    def PredictBatch(  # noqa: N802
        self, request: housing_pb2.HousingBatchRequest, context: grpc.ServicerContext
    ) -> housing_pb2.HousingBatchPrediction:
        batch = converters.features_to_batch(request.instances, self._endpoint.features, is_batch=True)
        return converters.housing_batch_to_proto(self._endpoint.predict(batch))

    def GetModelInfo(  # noqa: N802
        self, request: model_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelInfo:
        return _model_info(self._endpoint)


class IrisClassifierServicer(iris_pb2_grpc.IrisClassifierServicer):
    def __init__(self, endpoint: IrisEndpoint) -> None:
        self._endpoint = endpoint

    def Classify(  # noqa: N802
        self, request: iris_pb2.IrisFeatures, context: grpc.ServicerContext
    ) -> iris_pb2.IrisPrediction:
        batch = converters.features_to_batch((request,), self._endpoint.features, is_batch=False)
        return converters.iris_prediction_to_proto(self._endpoint.classify(batch))

    def ClassifyBatch(  # noqa: N802
        self, request: iris_pb2.IrisBatchRequest, context: grpc.ServicerContext
    ) -> iris_pb2.IrisBatchPrediction:
        batch = converters.features_to_batch(request.instances, self._endpoint.features, is_batch=True)
        return converters.iris_batch_to_proto(self._endpoint.classify(batch))

    def GetModelInfo(  # noqa: N802
        self, request: model_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelInfo:
        return _model_info(self._endpoint)
