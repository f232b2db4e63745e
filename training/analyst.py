"""The analyst's command line: `spectrashield analyze FILE…` and `spectrashield batch DIR --out REPORT`.

Both run the served pipeline in this process (no Ray: `pipeline.local.LocalPipeline` with the
settings and weight versions of a Serve profile, `cluster/serve.cpu.yaml` by default), or send the
files to a running service with `--url` (key: `--api-key` or `SPECTRASHIELD_API_KEY`). `analyze`
prints a readable summary per file, or the API's JSON with `--json`. `batch` walks a folder
recursively, tells media from everything else by content (what the decoder refuses as not media
is skipped with a note), shows a progress bar, resumes where it stopped (files already in
`results.jsonl` with the same size and modification time are not analysed again), and writes
`results.jsonl`, `results.csv` and `index.html`: a table sortable by probability, each row linking
to a page with the file's timeline (triage keyframe scores and hotspots) and, in-process, its
keyframes as thumbnails. The report is static files: it opens from disk.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROFILE = REPO / "cluster" / "serve.cpu.yaml"
KEY_ENV = "SPECTRASHIELD_API_KEY"
SKIP_ERRORS = ("not_media",)  # a batch notes these and goes on; everything else is reported as a failure

# One file's outcome: the API's answer (dict) or an error {"error", "detail"}, plus keyframe thumbnails (JPEG bytes).
Outcome = tuple[dict[str, Any], list[bytes], list[bytes | None]]  # answer, keyframe JPEGs, heat-maps (None: no face)


class Analyzer:
    """Files -> the API's answer, in-process or over HTTP."""

    def __init__(self, url: str | None, api_key: str | None, profile: Path, weights_dir: Path | None,
                 timeout_s: float = 300.0, heatmaps: bool = False) -> None:
        self.url, self.api_key, self.timeout_s, self.heatmaps = url, api_key, timeout_s, heatmaps
        self._local = None
        if url is None:
            import yaml

            from pipeline.config import PipelineConfig, weight_versions
            from pipeline.local import LocalPipeline

            deployments = yaml.safe_load(profile.read_text())["applications"][0].get("deployments") or []
            user_configs = {d["name"]: d.get("user_config") or {} for d in deployments}
            self._local = LocalPipeline.load(
                PipelineConfig.from_user_configs(user_configs), weight_versions(user_configs), weights_dir=weights_dir
            )

    def __call__(self, source: Path | str) -> Outcome:
        """A file, or an http(s) URL (the service fetches it with --url; in-process it is fetched here under the
        service's default rules: public addresses only, bounded size and time)."""
        if is_url(source):
            return self._from_url(str(source))
        path = Path(source)
        data = path.read_bytes()
        if self._local is None:
            answer = self._remote(path.name, data)
            return answer, self._thumbnails(data, answer), []
        return self._in_process(path.name, data)

    @staticmethod
    def _thumbnails(data: bytes, answer: dict[str, Any]) -> list[bytes]:
        """The service's keyframes cut here from the same file (decoded with the default settings, faces
        skipped): a synchronous answer keeps no pictures. None for an error or a file without frames."""
        from media.errors import MediaError
        from media.thumbnails import thumbnails_at

        if "error" in answer:
            return []
        try:
            return thumbnails_at(data, keyframe_times(answer), side=160)
        except MediaError:
            return []

    def _from_url(self, url: str) -> Outcome:
        if self._local is None:
            return self._remote(None, None, url=url), [], []
        import asyncio

        from deployments.fetch import FetchError, fetch
        from pipeline.config import IngressConfig

        limits = IngressConfig()
        try:
            name, data = asyncio.run(fetch(url, max_bytes=limits.max_upload_bytes, timeout_s=limits.url_timeout_s,
                                           max_redirects=limits.url_max_redirects))
        except FetchError as exc:
            return {"error": "bad_url", "detail": exc.detail}, [], []
        return self._in_process(name, data)

    def _in_process(self, name: str, data: bytes) -> Outcome:
        from deployments.edge import ERROR_NAMES
        from media.errors import MediaError
        from media.thumbnails import jpeg_thumbnails
        from pipeline.decode import decode

        try:
            clip = decode(data, self._local.config.decode, keep_frames=True)
        except MediaError as exc:
            return {"error": ERROR_NAMES.get(exc.http_status, "bad_request"), "detail": str(exc)}, [], []
        analysis = self._local.run_clip(clip)
        answer = self._local.respond(analysis, request_id="local", filename=name).model_dump(mode="json")
        times = keyframe_times(answer)
        return answer, jpeg_thumbnails(clip.frames, clip.timestamps, times, side=160), self._heatmaps(clip, times)

    def _heatmaps(self, clip: Any, times: list[float]) -> list[bytes | None]:
        """With `heatmaps`: where the visual model looked at each keyframe's face (None: no face there)."""
        if not self.heatmaps or not times:
            return []
        import numpy as np

        from media.clip import face_crops_at
        from pipeline.explain import explain_crops

        crops = face_crops_at(clip, times)
        found = [c for c in crops if c is not None]
        maps = iter(explain_crops(self._local.model("compression_resilient"), np.stack(found), self._local.device)
                    if found else [])
        return [next(maps).jpeg if c is not None else None for c in crops]

    def _remote(self, name: str | None, data: bytes | None, url: str | None = None) -> dict[str, Any]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"data": {"url": url}} if url is not None else {"files": {"file": (name, data)}}
        try:
            r = httpx.post(f"{self.url.rstrip('/')}/v1/analyze", **body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            return {"error": "unreachable", "detail": f"{type(exc).__name__}: {exc}"}
        try:
            body = r.json()
        except ValueError:
            body = {"error": "http_error", "detail": r.text[:300]}
        if r.status_code != 200 and "error" not in body:
            body = {"error": "http_error", "detail": json.dumps(body)[:300]}
        return body


def keyframe_times(answer: dict[str, Any]) -> list[float]:
    """The keyframes' times, or an image's one picture (t = 0), as the job worker keeps them."""
    return [k["t"] for k in answer["keyframes"]] or ([0.0] if answer["media"]["kind"] == "image" else [])


def is_url(source: Path | str) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


# ---- text ---------------------------------------------------------------------------------------
def summary(path: str, answer: dict[str, Any]) -> str:
    """The answer in words a person reads correctly."""
    if "error" in answer:
        return f"{path}: not analysed ({answer['error']}): {answer.get('detail', '')}"
    p = answer["fake_probability"]
    verdict = {
        "fake": f"FAKE (probability of manipulation {p:.0%})",
        "real": f"REAL (probability of manipulation {p:.0%})",
        "uncertain": f"UNCERTAIN: no confident call (probability of manipulation {p:.0%})",
    }[answer["verdict"]]
    media = answer["media"]
    lines = [
        f"{path}: {verdict}",
        (f"  {media['kind']}, {media['duration_s']:.1f} s, {media['width']}x{media['height']}, "
         f"faces on {media['face_coverage']:.0%} of frames"),
    ]
    for reason in answer["reasons"]:
        lines.append(f"  reason {reason['code']}{' (decisive)' if reason.get('decisive') else ''}: {reason['message']}")
    for name, m in answer["modalities"].items():
        score = f"score {m['score']:.2f}" if m.get("score") is not None else "no score"
        why = f" ({m['code']}: {m['reason']})" if m.get("reason") else ""
        weight = answer.get("gate_weights", {}).get(name)
        lines.append(f"  {name:<7} {m['status']:<7} {score}{f', weight {weight:.2f}' if weight is not None else ''}{why}")
    for h in answer["hotspots"]:
        lines.append(f"  suspicious {h['start']:.1f}-{h['end']:.1f} s (mean triage score {h['score']:.2f})")
    versions = ", ".join(f"{k} {v['version']}" for k, v in answer["models"].items() if v.get("version"))
    lines.append(f"  models: {versions}")
    return "\n".join(lines)


# ---- batch --------------------------------------------------------------------------------------
def walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime": round(st.st_mtime, 3)}


def run_batch(root: Path, out: Path, analyze: Callable[[Path], Outcome], progress: bool = True) -> dict[str, int]:
    """Analyse every file under `root` not already in `out/results.jsonl`; then write the CSV and HTML report."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "files").mkdir(exist_ok=True)
    results_path = out / "results.jsonl"
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["path"]] = row
    files = [p for p in walk(root) if not p.resolve().is_relative_to(out.resolve())]
    todo = [p for p in files if (r := done.get(str(p.relative_to(root)))) is None or
            {k: r.get(k) for k in ("size", "mtime")} != _stamp(p)]
    counts = {"files": len(files), "resumed": len(files) - len(todo), "analysed": 0, "skipped": 0, "failed": 0}
    from tqdm import tqdm

    with results_path.open("a") as sink:
        for path in tqdm(todo, desc="analysing", unit="file", disable=not progress):
            rel = str(path.relative_to(root))
            answer, thumbs, heats = analyze(path)
            row = {"path": rel, **_stamp(path), "answer": answer, "thumbnails": [], "heatmaps": []}
            if "error" in answer:
                counts["skipped" if answer["error"] in SKIP_ERRORS else "failed"] += 1
            else:
                counts["analysed"] += 1
                stem = f"{len(done):05d}"
                for i, jpeg in enumerate(thumbs):
                    name = f"files/{stem}-kf{i}.jpg"
                    (out / name).write_bytes(jpeg)
                    row["thumbnails"].append(name)
                for i, jpeg in enumerate(heats):
                    name = f"files/{stem}-kf{i}-heat.jpg" if jpeg is not None else None
                    if name:
                        (out / name).write_bytes(jpeg)
                    row["heatmaps"].append(name)
            row["page"] = f"files/{len(done):05d}.html"
            done[rel] = row
            sink.write(json.dumps(row) + "\n")
            sink.flush()
    rows = sorted(done.values(), key=lambda r: r["path"])
    write_csv(out / "results.csv", rows)
    for row in rows:
        (out / row["page"]).write_text(file_page(row))
    (out / "index.html").write_text(index_page(rows, root))
    return counts


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "status", "verdict", "fake_probability", "confidence", "kind", "duration_s", "reasons",
                    "error"])
        for r in rows:
            a = r["answer"]
            if "error" in a:
                w.writerow([r["path"], "skipped" if a["error"] in SKIP_ERRORS else "failed", "", "", "", "", "", "",
                            f"{a['error']}: {a.get('detail', '')}"])
            else:
                w.writerow([r["path"], "analysed", a["verdict"], f"{a['fake_probability']:.4f}", f"{a['confidence']:.4f}",
                            a["media"]["kind"], a["media"]["duration_s"], " ".join(x["code"] for x in a["reasons"]), ""])


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}
th,td{padding:.3em .7em;border-bottom:1px solid #ccc;text-align:left}th button{font:inherit;background:none;border:0;
cursor:pointer;text-decoration:underline}.fake{color:#a00}.real{color:#060}.uncertain{color:#850}img{margin:.3em}"""

_SORT = """<script>
function sortBy(col, numeric){const t=document.getElementById('results');const rows=[...t.tBodies[0].rows];
const dir=t.dataset.col==col&&t.dataset.dir=='asc'?'desc':'asc';t.dataset.col=col;t.dataset.dir=dir;
rows.sort((a,b)=>{let x=a.cells[col].dataset.v??a.cells[col].textContent,y=b.cells[col].dataset.v??b.cells[col].textContent;
if(numeric){x=parseFloat(x)||-1;y=parseFloat(y)||-1;}return (x>y?1:x<y?-1:0)*(dir=='asc'?1:-1);});
rows.forEach(r=>t.tBodies[0].appendChild(r));}
</script>"""


def index_page(rows: list[dict[str, Any]], root: Path) -> str:
    body = []
    for r in rows:
        a, path = r["answer"], html.escape(r["path"])
        if "error" in a:
            state = "skipped" if a["error"] in SKIP_ERRORS else "failed"
            body.append(f"<tr><td>{path}</td><td>{state}</td><td data-v='-1'>–</td><td>–</td>"
                        f"<td>{html.escape(a.get('detail', ''))[:200]}</td></tr>")
            continue
        reasons = html.escape(", ".join(x["code"] for x in a["reasons"]) or "–")
        body.append(
            f"<tr><td><a href='{html.escape(r['page'])}'>{path}</a></td>"
            f"<td class='{a['verdict']}'>{a['verdict'].upper()}</td>"
            f"<td data-v='{a['fake_probability']:.4f}'>{a['fake_probability']:.0%}</td>"
            f"<td>{html.escape(a['media']['kind'])}</td><td>{reasons}</td></tr>"
        )
    counts = {s: sum(1 for r in rows if _state(r) == s) for s in ("analysed", "skipped", "failed")}
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>SpectraShield report</title>
<style>{_STYLE}</style>{_SORT}</head><body><h1>SpectraShield report: {html.escape(str(root))}</h1>
<p>{counts['analysed']} analysed, {counts['skipped']} skipped (not media), {counts['failed']} failed. The probability is
the calibrated probability that the file was manipulated; <em>uncertain</em> means the evidence does not allow a
confident call. Click a column title to sort.</p>
<table id="results"><thead><tr><th><button onclick="sortBy(0,false)">file</button></th>
<th><button onclick="sortBy(1,false)">verdict</button></th><th><button onclick="sortBy(2,true)">P(manipulated)</button></th>
<th><button onclick="sortBy(3,false)">kind</button></th><th>reasons / note</th></tr></thead>
<tbody>{''.join(body)}</tbody></table></body></html>"""


def _state(row: dict[str, Any]) -> str:
    a = row["answer"]
    return "analysed" if "error" not in a else "skipped" if a["error"] in SKIP_ERRORS else "failed"


def timeline_png(answer: dict[str, Any]) -> bytes:
    """The clip's time axis: triage scores at the keyframes, hotspot ranges shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    duration = max(answer["media"]["duration_s"], 1e-3)
    fig, ax = plt.subplots(figsize=(8, 2.2), dpi=100)
    for h in answer["hotspots"]:
        ax.axvspan(h["start"], h["end"], color="tab:red", alpha=0.2, label="hotspot")
    ks = answer["keyframes"]
    ax.plot([k["t"] for k in ks], [k["score"] for k in ks], "o", color="black", label="keyframe triage score")
    ax.set(xlim=(0, duration), ylim=(0, 1), xlabel="seconds", ylabel="P(fake)")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def file_page(row: dict[str, Any]) -> str:
    a = row["answer"]
    title = html.escape(row["path"])
    if "error" in a:
        return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title></head><body>"
                f"<p><a href='../index.html'>report</a></p><h1>{title}</h1><p>Not analysed: "
                f"{html.escape(a['error'])}: {html.escape(a.get('detail', ''))}</p></body></html>")
    text = html.escape(summary(row["path"], a))
    plot = ""
    if a["media"]["kind"] == "video":
        plot = f"<h2>Timeline</h2><img alt='timeline of triage scores and hotspots' src='data:image/png;base64," \
               f"{base64.b64encode(timeline_png(a)).decode()}'>"
    frames = a["keyframes"] or [{"t": 0.0, "score": None}]  # an image: its one picture
    heats = row.get("heatmaps") or [None] * len(row["thumbnails"])
    thumbs = "".join(
        f"<figure style='display:inline-block'><img src='{html.escape(Path(t).name)}' alt='keyframe at "
        f"{k['t']:.1f} s'>" + (f"<img src='{html.escape(Path(h).name)}' alt='heat-map of the face at {k['t']:.1f} s: "
                               f"red where it looked manipulated to the visual model, blue where authentic'>" if h else "")
        + f"<figcaption>{k['t']:.1f} s" + (f", score {k['score']:.2f}" if k["score"] is not None else "")
        + "</figcaption></figure>"
        for t, k, h in zip(row["thumbnails"], frames, heats)
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style>
</head><body><p><a href="../index.html">report</a></p><h1>{title}</h1>
<p class="{a['verdict']}"><strong>{a['verdict'].upper()}</strong></p><pre>{text}</pre>{plot}
{'<h2>Keyframes</h2>' + thumbs if thumbs else ''}</body></html>"""


# ---- commands -----------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="a running service (default: in this process, no Ray)")
    parser.add_argument("--api-key", default=os.environ.get(KEY_ENV), help=f"with --url (default: ${KEY_ENV})")
    parser.add_argument("--serve-config", type=Path, default=DEFAULT_PROFILE,
                        help="in-process: settings and weight versions of this Serve profile")
    parser.add_argument("--weights-dir", type=Path, default=None)


def analyze_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spectrashield analyze", description="analyse media files and print verdicts")
    parser.add_argument("files", nargs="+", help="media files or http(s) URLs")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer per file (one per line)")
    _common(parser)
    args = parser.parse_args(argv)
    analyzer = Analyzer(args.url, args.api_key, args.serve_config, args.weights_dir)
    failed = 0
    for path in args.files:
        if not is_url(path) and not Path(path).is_file():
            answer: dict[str, Any] = {"error": "not_found", "detail": "no such file"}
        else:
            answer, _, _ = analyzer(path)
        failed += "error" in answer
        print(json.dumps({"file": str(path), **answer}) if args.json else summary(str(path), answer), flush=True)
    return 1 if failed else 0


def batch_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spectrashield batch", description="analyse a folder; write a report")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="report folder (results.jsonl, results.csv, index.html)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--heatmaps", action="store_true",
                        help="in-process: a heat-map of where the visual model looked per keyframe (~0.7 s each)")
    _common(parser)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if args.heatmaps and args.url:
        parser.error("--heatmaps runs the visual model here: not with --url")
    analyzer = Analyzer(args.url, args.api_key, args.serve_config, args.weights_dir, heatmaps=args.heatmaps)
    started = time.monotonic()
    counts = run_batch(args.folder, args.out, analyzer, progress=not args.no_progress)
    print(f"{counts['files']} files: {counts['analysed']} analysed, {counts['skipped']} skipped (not media), "
          f"{counts['failed']} failed, {counts['resumed']} already done, in {time.monotonic() - started:.1f} s; "
          f"report: {args.out / 'index.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "analyze":
        return analyze_main(rest)
    if command == "batch":
        return batch_main(rest)
    print("usage: python -m training.analyst {analyze,batch} ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
