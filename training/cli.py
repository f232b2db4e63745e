"""`spectrashield`: generate or adapt data, train, evaluate, and run leave-one-family-out.

    spectrashield generate ...                      # synthetic benchmark (training.benchmark)
    spectrashield generate-independent OUT_DIR ...  # a test-only benchmark made another way (training.independent)
    spectrashield adapt ...                         # public datasets -> manifest (training.datasets)
    spectrashield speech-corpus OUT_DIR ...         # real speech + real TTS -> manifest (training.speech_corpus)
    spectrashield unseen-speech OUT_DIR ...         # test-only real voices + corpus test spoofs (training.unseen_speech)
    spectrashield train-spoof --manifest M --out DIR [--version V]   # the spoof head on real speech
    spectrashield train {MODEL|all} --manifest M --version V
    spectrashield eval --manifest M (--version V | --url http://127.0.0.1:8000) --out DIR [--cross-manifest M2]
    spectrashield compare EVAL_DIR_A EVAL_DIR_B     # two eval runs of the same files: paired AUC difference
    spectrashield lofo --manifest M --out DIR
    spectrashield analyze FILE... [--json] [--url URL --api-key K]   # verdicts, in-process or from a service
    spectrashield batch DIR --out REPORT [--url URL]                 # a folder -> jsonl, csv, HTML report
    spectrashield keys {create,revoke,list} --db KEYS.sqlite [--name N --scopes analyze,jobs]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from training.evaluate import (
    compare_runs,
    evaluate,
    evaluate_cross_generator,
    format_comparison,
    format_side_by_side,
    leave_one_family_out,
    record_in_cards,
)
from pipeline.config import PipelineConfig
from training.features import parse_versions
from training.ood import face_detail_minimums, fit_ood
from training.train import MODEL_NAMES, PRESETS, train_all, train_model

DELEGATED = {
    "generate": ("training.benchmark", "generate the synthetic forensic benchmark and its manifest"),
    "generate-independent": (
        "training.independent", "generate the independent, test-only cross-generator benchmark and its manifest",
    ),
    "adapt": ("training.datasets", "write a manifest for a public dataset already on disk"),
    "speech-corpus": (
        "training.speech_corpus", "real speakers (DATA.md packages) + real TTS engines and vocoders -> an audio manifest",
    ),
    "unseen-speech": (
        "training.unseen_speech", "test-only real voices no model trains on (GSM prompts) + the corpus's test spoofs",
    ),
    "analyze": ("training.analyst:analyze_main", "analyse media files (in-process, or --url a running service)"),
    "batch": ("training.analyst:batch_main", "analyse a folder; results.jsonl, results.csv and an HTML report"),
    "update": ("training.continual:update_main", "learn analysts' feedback into a new visual version; canary or refuse"),
    "continual-scenario": (
        "training.continual:scenario_main", "naive vs replay vs replay+distillation on a held-back family, k-shot",
    ),
    "adversarial": ("training.adversarial", "forgery policy vs detector loop; clean AUC, attack success, PGD"),
    "meta-scenario": ("training.meta", "k-shot adaptation after ordinary pre-training vs Reptile over families"),
    "keys": ("deployments.keys", "create, revoke or list the API keys of the Gatekeeper's key database"),
    "train-spoof": (
        "training.spoof", "train the band-limited spoof head on a real speech corpus; LOEO/LOSO EER; new av bundle",
    ),
}


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _common(parser: argparse.ArgumentParser) -> None:
    """Options every training or evaluation command shares."""
    parser.add_argument("--manifest", type=Path, required=True, help="manifest.jsonl (paths relative to it)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="weights root (default: the repo's weights/)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache (default: <manifest dir>/feature_cache)")
    parser.add_argument("--serve-config", type=Path, default=None,
                        help="decoding and stage settings from this Serve config (default: the deployments' defaults)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--workers", type=int, default=1, help="processes decoding uncached files")
    parser.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectrashield", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in DELEGATED.items():
        commands.add_parser(name, help=f"{help_text} (options: spectrashield {name} --help)", add_help=False)

    train = commands.add_parser("train", help="train one model, or all in dependency order, into a new version")
    train.add_argument("model", choices=(*MODEL_NAMES, "all"))
    _common(train)
    train.add_argument("--version", required=True, help="bundle version to write, e.g. v1")
    train.add_argument("--preset", default="default", choices=PRESETS, help="'test' = tiny models for smoke runs")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--branch-version", default=None, help="fusion: branch bundles to read (default: --version)")
    train.add_argument("--exclude-family", action="append", default=[], help="drop a family from training splits")
    train.add_argument(
        "--fusion-scalars-only", action="store_true",
        help="fusion: build the tokens from each branch's logits and statistics only, not its embedding "
        "(and the av token without the spoof logit, which the audio token carries)",
    )
    train.add_argument(
        "--fusion-ignore", action="append", default=[], choices=("triage", "visual", "av", "audio"),
        help="fusion: a modality it does not read at all (its branch still runs and reports)",
    )
    train.add_argument(
        "--av-freeze", type=float, default=0.0,
        help="av_alignment: chance an in-sync, unshifted training window becomes a frozen-mouth negative "
        "(the mouth held still over 30-70%% of it while speech runs on); 0 = the v1 recipe's draws",
    )
    train.add_argument(
        "--av-sync-jitter", type=float, default=0.0, metavar="MS",
        help="av_alignment: an in-sync training window that stays a positive has its audio moved by a random "
        "lead within +-MS ms (recorded speech is rarely frame-exact); 0 = the v1 recipe's draws",
    )
    train.add_argument(
        "--av-reverb", type=float, default=0.0, metavar="P",
        help="av_alignment: chance a training window's audio is heard in a synthetic room (RT60 0.15-0.8 s; "
        "the generator's speech is dry); 0 = the v1 recipe's draws",
    )
    train.add_argument(
        "--fusion-input-noise", type=float, default=0.0,
        help="fusion: Gaussian noise on every input feature while training, in units of that feature's "
        "standard deviation over the fit split; 0 = none",
    )
    train.add_argument(
        "--fusion-linear", action="store_true",
        help="fusion: a logistic regression over the branches' leading scalars (the av sync logit, not the offset), "
        "one bias per modality present, no attention path; needs --fusion-scalars-only",
    )
    train.add_argument(
        "--fusion-visual-peak", default="second", choices=("second", "max"),
        help="fusion: the crop logit it reads beside the visual mean: the second largest (one frame alone is "
        "not evidence; default) or the largest (fusions v0-v4)",
    )
    train.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers reading the cache")
    train.add_argument("--ray-address", default=None,
                       help="train on this Ray cluster: decoding as Ray Data, each model as Ray Train (local otherwise)")
    train.add_argument("--ray-workers", type=int, default=2, help="with --ray-address: Ray Train workers per model")
    train.add_argument("--force", action="store_true", help="replace existing bundles of --version")

    ev = commands.add_parser("eval", help="metrics and plots of a split, in-process or against a running service")
    _common(ev)
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--version", help="in-process with these bundles: one version for all four, or per bundle, e.g. "
        "'fast_triage=v1,compression_resilient=v1,av_alignment=v2,fusion=v2'",
    )
    source.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    ev.add_argument("--split", default="test", choices=("train", "val", "fusion", "test"))
    ev.add_argument("--out", type=Path, required=True, help="directory for metrics.json, scores.jsonl, plots")
    ev.add_argument("--family", action="append", default=None, help="only authentic files and fakes of this family")
    ev.add_argument("--no-baselines", action="store_true")
    ev.add_argument("--timeout", type=float, default=300.0, help="--url: seconds per request")
    ev.add_argument("--pin", default=None, help="--url: X-Model-Versions header, e.g. 'AVAlignment=v2, Fusion=v2'")
    ev.add_argument(
        "--cross-manifest", type=Path, default=None,
        help="also score this manifest's test split (e.g. `generate-independent` output) with the same weights or "
             "service, and report both side by side; nothing is fitted on it",
    )
    ev.add_argument(
        "--record-in-cards", action="store_true",
        help="write the scores into each evaluated bundle's card.md under --weights-dir (checksums updated)",
    )

    compare = commands.add_parser(
        "compare", help="two eval outputs of the same files (e.g. a new version and the served one): the AUC "
        "difference with a paired bootstrap interval, and how verdicts moved",
    )
    compare.add_argument("a", type=Path, help="an `eval --out` directory (or its scores.jsonl): A")
    compare.add_argument("b", type=Path, help="another, of the same files: B (the difference is A - B)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")

    lofo = commands.add_parser("lofo", help="leave-one-family-out: retrain without each family, test on it (slow)")
    _common(lofo)
    lofo.add_argument("--out", type=Path, required=True)
    lofo.add_argument("--family", action="append", default=None, help="default: every family in the test split")
    lofo.add_argument("--preset", default="default", choices=PRESETS)
    lofo.add_argument("--epochs", type=int, default=None)
    lofo.add_argument("--seed", type=int, default=0)

    ood = commands.add_parser(
        "fit-ood", help="fit a branch's out-of-distribution statistics on train/val and attach them to its bundle"
    )
    _common(ood)
    ood.add_argument(
        "--branch", choices=("visual", "audio", "channel", "expert", "expert_channel"), default="visual",
        help="visual: compression_resilient, authentic clips; audio: av_alignment's spoof head, one region per "
        "class; channel: av_alignment's training speech as recorded (models.channel), one region per class; "
        "expert, expert_channel: the same two for av_alignment's speech expert (fit on the expert's own corpus)",
    )
    ood.add_argument("--version", required=True, help="the branch's bundle version to attach them to")
    ood.add_argument("--quantile", type=float, default=0.99, help="of the val distances: the threshold")
    ood.add_argument("--hold-out-source", action="append", default=[],
                     help="leave this manifest source out (repeatable), as train-spoof --hold-out-source does")

    detail = commands.add_parser(
        "fit-detail", help="the visual stage's face-detail minimums, from the authentic training faces made thumbnails"
    )
    _common(detail)
    detail.add_argument("--split", default="train")
    detail.add_argument("--side", type=int, default=32, help="the thumbnail's side in pixels")
    detail.add_argument("--quantile", type=float, default=0.9, help="of the thumbnails' detail: the minimum")
    return parser


def _delegate(command: str, argv: Sequence[str]) -> int:
    """Hand the rest of the command line to a module's own `main`, imported only now (it may not exist)."""
    spec, _ = DELEGATED[command]
    module_name, _, function = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"spectrashield {command}: {module_name} is not available in this installation", file=sys.stderr)
        return 2
    result = getattr(module, function or "main")(list(argv))
    return int(result) if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare":  # reads two finished evaluations: no models, no settings
        comparison = compare_runs(args.a, args.b)
        print(json.dumps(comparison, indent=2) if args.json else format_comparison(comparison))
        return 0
    if getattr(args, "fusion_linear", False) and not args.fusion_scalars_only:
        parser.error("--fusion-linear reads scalars only: give --fusion-scalars-only too")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # eval --url: not one INFO line per request
    command_line = shlex.join(["spectrashield", *argv])
    settings = PipelineConfig.from_serve_config(args.serve_config) if args.serve_config else PipelineConfig()
    device = _device(args.device)
    progress = not args.no_progress
    common = {"weights_dir": args.weights_dir, "cache_dir": args.cache_dir, "settings": settings, "device": device,
              "workers": args.workers, "progress": progress}

    if args.command == "train":
        model_options = {  # each applies to its own model only (train all passes them to every step)
            "fusion_scalars_only": args.fusion_scalars_only, "fusion_ignore": args.fusion_ignore,
            "fusion_visual_peak": args.fusion_visual_peak, "fusion_input_noise": args.fusion_input_noise,
            "fusion_linear": args.fusion_linear, "av_freeze": args.av_freeze, "av_sync_jitter": args.av_sync_jitter,
            "av_reverb": args.av_reverb,
        }
        if args.ray_address:
            from training.distributed import connect, train_models_on_ray

            connect(args.ray_address)
            results = train_models_on_ray(list(MODEL_NAMES) if args.model == "all" else [args.model], {
                "manifest": args.manifest, "version": args.version, "weights_dir": args.weights_dir,
                "cache_dir": args.cache_dir, "settings": settings, "device": device, "preset": args.preset,
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                "branch_version": args.branch_version, "exclude_families": args.exclude_family,
                "loader_workers": args.loader_workers, "command": command_line, "overwrite": args.force,
                **model_options,
            }, workers=args.ray_workers, progress=progress)
        elif args.model == "all":
            results = train_all(
                args.manifest, args.version, preset=args.preset, seed=args.seed, epochs=args.epochs,
                exclude_families=args.exclude_family, loader_workers=args.loader_workers, command=command_line,
                overwrite=args.force, **model_options, **common,
            )
        else:
            results = {args.model: train_model(
                args.model, args.manifest, version=args.version, preset=args.preset, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, seed=args.seed, branch_version=args.branch_version,
                exclude_families=args.exclude_family, loader_workers=args.loader_workers, command=command_line,
                overwrite=args.force, **model_options, **common,
            )}
        for name, result in results.items():
            print(f"{name}: {result.path} ({result.wall_s:.1f} s) {json.dumps(result.metrics, default=str)}")
        return 0

    if args.command == "eval":
        version = parse_versions(args.version)
        pins = {"pins": args.pin} if args.pin else {}
        report = evaluate(
            args.manifest, args.split, version=version, url=args.url, out_dir=args.out, families=args.family,
            with_baselines=not args.no_baselines, timeout_s=args.timeout, **pins, **common,
        )
        print(json.dumps({"n_scored": report["n_scored"], "fused": report["fused"]["overall"]}, indent=2))
        if args.cross_manifest is None:
            print(format_side_by_side({args.split: report["summary"]}))
        else:
            report = evaluate_cross_generator(
                report, args.cross_manifest, out_dir=args.out, version=version, url=args.url,
                timeout_s=args.timeout, **pins, **common,
            )
            print(format_side_by_side(report["side_by_side"]))
        print(f"wrote {args.out}")
        if args.record_in_cards:
            for path in record_in_cards(report, args.weights_dir, command_line):
                print(f"recorded the scores in {path / 'card.md'}")
        return 0

    if args.command == "fit-detail":
        report = face_detail_minimums(
            args.manifest, split=args.split, side=args.side, quantile=args.quantile, cache_dir=args.cache_dir,
            settings=settings, workers=args.workers, progress=progress,
        )
        print(json.dumps(report, indent=2))
        return 0

    if args.command == "fit-ood":
        report = fit_ood(
            args.manifest, args.version, branch=args.branch, quantile=args.quantile, weights_dir=args.weights_dir,
            cache_dir=args.cache_dir, hold_out_sources=tuple(args.hold_out_source),
            settings=settings, device=device, workers=args.workers, progress=progress,
        )
        print(json.dumps(report, indent=2))
        return 0

    summary = leave_one_family_out(
        args.manifest, args.out, families=args.family, preset=args.preset, epochs=args.epochs, seed=args.seed,
        **common,
    )
    print(json.dumps({f: r["fused"] for f, r in summary["families"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
