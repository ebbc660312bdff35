"""Dataflow specifics: what a ``--dry_run=True`` job would submit, and a job's console URL."""

from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, WorkerOptions

LOG = logging.getLogger(__name__)


def job_url(options: PipelineOptions, job_id: str | None) -> str | None:
    """The Cloud console page of a Dataflow job."""
    if not job_id:
        return None
    cloud = options.view_as(GoogleCloudOptions)
    return f"https://console.cloud.google.com/dataflow/jobs/{cloud.region}/{job_id}?project={cloud.project}"


def describe_job(result, options: PipelineOptions) -> dict:
    """The Dataflow job a dry run built, as plain data.

    Beam's DataflowRunner with ``--dry_run=True`` builds the job (pipeline proto, options,
    container environment) and returns before staging or submitting anything. This renders the
    parts that would be sent: name, project, region, temp location, SDK container image(s), the
    job's environment block, and the pipeline's steps (``steps``: every composite step and the
    labelled steps inside it, by label; ``graph``: composite -> its labelled steps).

    Args:
        result: what ``Pipeline.run()`` returned for the dry run (it carries ``.job``).
        options: the run's options.

    Returns:
        A JSON-serialisable dict.
    """
    from google.protobuf.json_format import MessageToDict

    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.dataflow.internal import apiclient

    job = result.job
    cloud = options.view_as(GoogleCloudOptions)
    worker = options.view_as(WorkerOptions)
    pipeline = job.proto_pipeline
    images = []
    for environment in pipeline.components.environments.values():
        if environment.urn == common_urns.environments.DOCKER.urn:
            payload = beam_runner_api_pb2.DockerPayload.FromString(environment.payload)
            images.append(payload.container_image)
    transforms = pipeline.components.transforms
    top = [t for root in pipeline.root_transform_ids for t in transforms[root].subtransforms] or list(pipeline.root_transform_ids)
    # The job's composite steps with the labelled steps inside each, as the Dataflow graph nests them.
    graph = {transforms[t].unique_name: [transforms[s].unique_name.rsplit("/", 1)[-1] for s in transforms[t].subtransforms] for t in top}
    steps = list(dict.fromkeys(name for composite, inner in graph.items() for name in (composite, *inner)))
    try:  # the environment block create_job would attach (rendered without staging anything)
        environment = MessageToDict(
            apiclient.Environment(
                packages=[],
                options=options,
                environment_version=apiclient._LEGACY_ENVIRONMENT_MAJOR_VERSION if hasattr(apiclient, "_LEGACY_ENVIRONMENT_MAJOR_VERSION") else "8",
                proto_pipeline_staged_url=f"{cloud.staging_location or cloud.temp_location}/pipeline.pb",
                proto_pipeline=pipeline,
            ).proto._pb
        )
    except Exception as exc:  # rendering is best effort; the essentials are below regardless
        LOG.warning("could not render the Dataflow environment block: %s", exc)
        environment = {}
    return {
        "name": job.proto.name,
        "type": str(job.proto.type_.name if hasattr(job.proto.type_, "name") else job.proto.type_),
        "project": cloud.project,
        "region": cloud.region,
        "temp_location": cloud.temp_location,
        "staging_location": cloud.staging_location,
        "sdk_container_image": worker.sdk_container_image,
        "container_images": sorted(set(images)),
        "steps": steps,
        "graph": graph,
        "environment": environment,
    }
