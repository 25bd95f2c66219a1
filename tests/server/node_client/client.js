// Calls both services using nothing but the .proto files in protos/ (no generated code, no reflection)
// and prints what it got as one JSON object. Usage: node client.js <repo root> <host:port>
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [repoRoot, target] = process.argv.slice(2);
const definition = protoLoader.loadSync(
  ["protos/prediction/v1/housing.proto", "protos/prediction/v1/iris.proto"].map((file) => path.join(repoRoot, file)),
  { includeDirs: [repoRoot], keepCase: true, longs: String, enums: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).prediction.v1;
const housing = new v1.HousingPredictor(target, grpc.credentials.createInsecure());
const iris = new v1.IrisClassifier(target, grpc.credentials.createInsecure());

const call = (client, method, request) =>
  new Promise((resolve) => {
    client[method](request, { deadline: Date.now() + 10000 }, (error, response) =>
      resolve(error ? { code: grpc.status[error.code], details: error.details } : response),
    );
  });

const house = {
  median_income: 8.3252, house_age: 41, average_rooms: 6.984, average_bedrooms: 1.024,
  population: 322, average_occupancy: 2.556, latitude: 37.88, longitude: -122.23,
};
const flower = { sepal_length_cm: 5.1, sepal_width_cm: 3.5, petal_length_cm: 1.4, petal_width_cm: 0.2 };

(async () => {
  const results = {
    predict: await call(housing, "Predict", house),
    predict_batch: await call(housing, "PredictBatch", { instances: [house, house] }),
    housing_info: await call(housing, "GetModelInfo", {}),
    classify: await call(iris, "Classify", flower),
    classify_batch: await call(iris, "ClassifyBatch", { instances: [flower] }),
    missing_field: await call(iris, "Classify", { sepal_length_cm: 5.1 }),
  };
  housing.close();
  iris.close();
  process.stdout.write(JSON.stringify(results));
})();
