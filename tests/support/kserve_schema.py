"""Offline structural schemas for the KServe objects in deploy/kserve.

KServe publishes no JSON schema for its custom resources outside its CRDs, and its Python
SDK (which has generated model classes) pulls in a web framework, pandas and a
Kubernetes client. So these schemas are written here from KServe's Go API types
(serving.kserve.io v1alpha1 ServingRuntimeSpec, v1beta1 PredictorSpec / ModelSpec /
ComponentExtensionSpec) and cover the fields of those types that the manifests use or
sit next to them; any other field is rejected as unknown, so adding a field to a
manifest means adding it here after checking KServe's API.

Every Kubernetes type embedded in them (Container, Volume, Toleration, ObjectMeta, the
PodSpec and Container fields that KServe inlines) is checked against the strict
Kubernetes schemas bundled with kubernetes-validate, so unknown fields and wrong types
fail there too.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from referencing import Registry, Resource

DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
CORE = "#/$defs/io.k8s.api.core.v1."
META = "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1."
PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]  # constants.InferenceServiceProtocol
SCALE_METRICS = ["cpu", "memory", "concurrency", "rps"]  # v1beta1.ScaleMetric


def _ref(target: str) -> dict[str, str]:
    return {"$ref": target}


def _string_map() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _inlined(defs: dict[str, Any], name: str) -> dict[str, Any]:
    """The properties of a Kubernetes type that KServe inlines (`json:",inline"`); its own
    required fields do not apply there."""
    return copy.deepcopy(defs[name]["properties"])


def _kserve_defs(defs: dict[str, Any]) -> dict[str, Any]:
    supported_model_format = _closed(
        {
            "name": {"type": "string", "minLength": 1},
            "version": {"type": "string"},
            "autoSelect": {"type": "boolean"},
            "priority": {"type": "integer", "minimum": 1},
        },
        required=["name"],
    )
    serving_runtime_spec = _closed(
        {
            "supportedModelFormats": {"type": "array", "items": supported_model_format},
            "multiModel": {"type": "boolean"},
            "disabled": {"type": "boolean"},
            "protocolVersions": {"type": "array", "items": {"enum": PROTOCOLS}},
            # ServingRuntimePodSpec, inlined
            "containers": {
                "type": "array",
                "minItems": 1,
                "items": _ref(CORE + "Container"),
            },
            "volumes": {"type": "array", "items": _ref(CORE + "Volume")},
            "nodeSelector": _string_map(),
            "affinity": _ref(CORE + "Affinity"),
            "tolerations": {"type": "array", "items": _ref(CORE + "Toleration")},
            "labels": _string_map(),
            "annotations": _string_map(),
            "imagePullSecrets": {
                "type": "array",
                "items": _ref(CORE + "LocalObjectReference"),
            },
            "hostIPC": {"type": "boolean"},
            # ModelMesh fields
            "grpcEndpoint": {"type": "string"},
            "grpcDataEndpoint": {"type": "string"},
            "httpDataEndpoint": {"type": "string"},
            "replicas": {"type": "integer", "minimum": 0, "maximum": 65535},
            "storageHelper": _closed({"disabled": {"type": "boolean"}}),
        },
        required=["containers"],
    )
    model_spec = _closed(
        {
            "modelFormat": _closed(
                {"name": {"type": "string", "minLength": 1}, "version": {"type": "string"}},
                required=["name"],
            ),
            "runtime": {"type": "string", "minLength": 1},
            # PredictorExtensionSpec, inlined
            "storageUri": {"type": "string", "minLength": 1},
            "runtimeVersion": {"type": "string"},
            "protocolVersion": {"enum": PROTOCOLS},
            # corev1.Container, inlined: overrides of the runtime's container
            **_inlined(defs, "io.k8s.api.core.v1.Container"),
        },
        required=["modelFormat"],
    )
    component_extension = {
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "scaleTarget": {"type": "integer", "minimum": 1},
        "scaleMetric": {"enum": SCALE_METRICS},
        "containerConcurrency": {"type": "integer", "minimum": 0},
        "timeout": {"type": "integer", "minimum": 0},
        "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
        "labels": _string_map(),
        "annotations": _string_map(),
        "deploymentStrategy": _ref("#/$defs/io.k8s.api.apps.v1.DeploymentStrategy"),
    }
    predictor_spec = _closed(
        {
            "model": model_spec,
            # corev1.PodSpec, inlined (containers only for custom predictors)
            **_inlined(defs, "io.k8s.api.core.v1.PodSpec"),
            **component_extension,
        }
    )

    def resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        return _closed(
            {
                "apiVersion": {"const": api_version},
                "kind": {"const": kind},
                "metadata": _ref(META + "ObjectMeta"),
                "spec": spec,
            },
            required=["apiVersion", "kind", "metadata", "spec"],
        )

    return {
        "kserve.ServingRuntime": resource(
            "serving.kserve.io/v1alpha1", "ServingRuntime", serving_runtime_spec
        ),
        "kserve.ClusterServingRuntime": resource(
            "serving.kserve.io/v1alpha1", "ClusterServingRuntime", serving_runtime_spec
        ),
        "kserve.InferenceService": resource(
            "serving.kserve.io/v1beta1",
            "InferenceService",
            _closed({"predictor": predictor_spec}, required=["predictor"]),
        ),
    }


def strict_kubernetes_schema(filename: str, kubernetes_version: str) -> dict[str, Any]:
    """A schema file of kubernetes-validate's strict set, e.g. "_definitions.json"."""
    folder = f"v{kubernetes_version}-local-strict"
    path = resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder
    document: dict[str, Any] = json.loads((path / filename).read_text())
    return document


KINDS = ("ServingRuntime", "ClusterServingRuntime", "InferenceService")


@cache
def _validators(kubernetes_version: str) -> dict[str, jsonschema.Draft202012Validator]:
    document = strict_kubernetes_schema("_definitions.json", kubernetes_version)
    assert document["$id"] == DEFINITIONS_ID
    document["$defs"].update(_kserve_defs(document["$defs"]))
    registry: Registry[Any] = Resource.from_contents(document) @ Registry()
    return {
        kind: jsonschema.Draft202012Validator(
            {"$ref": f"{DEFINITIONS_ID}#/$defs/kserve.{kind}"}, registry=registry
        )
        for kind in KINDS
    }


def validate(document: dict[str, Any], kubernetes_version: str = "1.37.0") -> None:
    """Raises jsonschema.ValidationError (the deepest error) if `document` does not match."""
    kind = document.get("kind")
    if kind not in KINDS:
        raise ValueError(f"not a KServe kind this module knows: {kind!r}")
    validator = _validators(kubernetes_version)[kind]
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        raise error
