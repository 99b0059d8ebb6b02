"""``afdjax predict``: step time, throughput and the best ratio of measured configurations."""

from __future__ import annotations

import json

from ._cmd_fit import row_workloads
from ._parser import SIMULATION_OPTIONS, option_names


def load_model(spec: str):
    """The :class:`CalibratedModel` of a ``--hardware`` spec: a TOML file's ``[calibration]``
    table (written by ``afdjax fit throughput --out``) gives the covariance."""
    from .._fit._predict import CalibratedModel, calibration_from_mapping
    from .._specs import parse_hardware_spec, read_toml

    latency = parse_hardware_spec(spec)
    head = spec.strip().split(",", 1)[0].strip()
    if head.lower().endswith(".toml"):
        data = read_toml(head, "hardware")
        if "calibration" in data:
            return calibration_from_mapping(data["calibration"], latency, f"hardware file {head!r}")
    return CalibratedModel.of(latency)


def cmd_predict(args) -> int:
    import jax

    from .._fit._predict import predict
    from .._fit._sweep_data import read_ratio_sweep
    from .._step import Pipeline

    model = load_model(args.hardware)
    obs = read_ratio_sweep(args.observations, require_values=False)
    workloads = row_workloads(obs, args.workload)
    with option_names(*SIMULATION_OPTIONS):
        pred = predict(
            model,
            obs,
            workloads,
            key=jax.random.key(args.seed),
            num_steps=args.steps,
            num_replicas=args.replicas,
            posterior_draws=args.posterior_draws,
            max_ratio=args.max_ratio,
            step_model=Pipeline(args.micro_batches) if args.micro_batches else None,
        )
    if args.json:
        print(json.dumps(pred.to_dict(), indent=2))
    else:
        print(pred.format_text())
    return 0
