"""Publish a run's executed notebooks as pages: ``python -m emi_lib.docs --runs runs/demo --out docs/notebooks``.

The notebooks are committed without outputs, so a code host shows no figure and no number. This module renders
each executed numbered notebook of a run folder (what ``python -m emi_lib.run_notebooks`` wrote) into a Markdown
page ``<out>/<stem>.md`` with nbconvert; images become files in ``<out>/<stem>_files/``, never base64 inside the
page. Each page starts with a header naming the run (profile, time, data root) and linking the source notebook.

The pages are kept small: widget state and progress bars are dropped (an interactive widget becomes a note),
the papermill parameters cell is replaced by a line in the header, native-library log lines are removed from
stderr, long text outputs are capped, pandas' inline CSS is removed from HTML tables, and paths under the
repository the run was made in are written relative to it.

Publishing is all or nothing: unless every numbered notebook of ``--notebooks`` has an executed copy in the
run folder (and none of them failed), nothing is written and the command exits 1 naming the missing ones.
``make docs`` runs it on ``runs/demo``; ``make demo`` calls ``make docs`` after the README report.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import re
import shutil
import sys
from pathlib import Path

from emi_lib.notebook import repo_root

#: a text output (stream, or text/plain shown as text) keeps at most this many lines and characters
MAX_LINES = 60
MAX_CHARS = 6000

WIDGET = "application/vnd.jupyter.widget-view+json"
# tqdm's text fallback: "name:  40%|####      | 4/10 [...]" or "name: 0it [00:00, ?it/s]"
_PROGRESS = re.compile(r"^[^\n]*(?:\d+%\||\d+it \[)")
# glog lines of native libraries (MediaPipe, LiteRT, absl) and their fixed preambles on stderr
_NATIVE_LOG = re.compile(r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-]+:\d+\] |INFO: Created TensorFlow Lite "
                         r"|WARNING: All log messages before absl::InitializeLog\(\))")
_STYLE = re.compile(r"<style scoped>.*?</style>\n?", re.S)
_DATA_URI = re.compile(r"data:image/(png|jpeg|gif|svg\+xml);base64,([A-Za-z0-9+/=\s]+)")


def numbered_notebooks(folder: Path) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of ``folder``, in order (as ``emi_lib.run_notebooks`` runs them)."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


class MissingNotebooks(RuntimeError):
    """Some numbered notebooks have no executed copy (or a failed one) in the run folder."""


# --------------------------------------------------------------------------------------------- the run's facts
def _papermill(nb) -> dict:
    return dict(nb.metadata.get("papermill") or {})


def _is_injected(cell) -> bool:
    return "injected-parameters" in cell.get("metadata", {}).get("tags", [])


def _executed(nb) -> bool:
    return any(c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")) for c in nb.cells)


def _failed(nb) -> bool:
    return bool(_papermill(nb).get("exception")) or any(
        o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def check_run(runs: Path, notebooks: Path) -> list[str]:
    """Problems that forbid publishing ``runs``: numbered notebooks of ``notebooks`` with no executed copy in
    ``runs``, or whose copy failed. Empty when every page can be rendered."""
    import nbformat

    problems = []
    for src in numbered_notebooks(notebooks):
        copy = runs / src.name
        if not copy.exists():
            problems.append(f"{src.name}: no executed copy in {runs}")
            continue
        nb = nbformat.read(copy, as_version=4)
        if not _executed(nb):
            problems.append(f"{src.name}: the copy in {runs} was never executed")
        elif _failed(nb):
            problems.append(f"{src.name}: the copy in {runs} failed")
    return problems


def _repo_roots(nbs, runs: Path) -> list[str]:
    """Repositories the run's paths may start with: where papermill read the notebooks from (when it recorded an
    absolute path), the repository holding the run folder, and this checkout. Longest first."""
    roots = {str(repo_root())}
    if (runs.resolve().parent.parent / "notebooks").is_dir():
        roots.add(str(runs.resolve().parent.parent))
    for nb in nbs:
        src = Path(str(_papermill(nb).get("input_path") or ""))
        if src.is_absolute() and src.parent.name == "notebooks":
            roots.add(str(src.parent.parent))
    return sorted((r.rstrip("/") for r in roots if r.strip("/")), key=len, reverse=True)


def _data_root(nb) -> str | None:
    """The data root the notebook ran on: its recorded ``data_root``, else a printed ``data root: PATH`` line,
    else an injected ``DATA_ROOT`` parameter."""
    printed = None
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            rec = (o.get("data") or {}).get("application/json")
            if isinstance(rec, dict) and isinstance(rec.get("data_root"), str):
                return rec["data_root"]
            if printed is None and o.get("output_type") == "stream":
                m = re.search(r"^data root: (\S+)", o.get("text", ""), re.M)
                printed = m.group(1) if m else None
    return printed or (_papermill(nb).get("parameters") or {}).get("DATA_ROOT") or None


def _when(pm: dict) -> str:
    try:
        start = dt.datetime.fromisoformat(pm["start_time"])
        end = dt.datetime.fromisoformat(pm["end_time"])
    except (KeyError, TypeError, ValueError):
        return "time of the run not recorded"
    span = (f"{start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC" if start.date() == end.date()
            else f"{start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC")
    return f"run {span} ({float(pm.get('duration') or (end - start).total_seconds()):.0f} s)"


def _code(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code" and not _is_injected(c)]


def header(nb, stem: str, *, run_label: str, source_link: str, source_nb=None) -> str:
    """The lines that open a page: where the run came from and the source notebook."""
    pm = _papermill(nb)
    params = pm.get("parameters") or {}
    profile = params.get("PROFILE", "not recorded")
    root = _data_root(nb)
    root_name = Path(root).name if root else "not recorded"
    injected = ", ".join(f"`{k} = {v!r}`" for k, v in params.items()) or "none"
    lines = [f"> **Executed copy of [`notebooks/{stem}.ipynb`]({source_link})** from the run `{run_label}`: "
             f"profile `{profile}`, {_when(pm)}, data root `{root_name}`; parameters injected by papermill: "
             f"{injected}.",
             ">",
             "> Rendered by `python -m emi_lib.docs` (`make docs`): the outputs are the run's; progress bars and "
             "widget state are dropped and long text outputs cut."]
    if source_nb is not None:
        ran, now = _code(nb), _code(source_nb)
        if ran == now:
            lines[-1] += " The code is the source notebook's."
        else:
            differ = sum(a != b for a, b in zip(ran, now)) + abs(len(ran) - len(now))
            lines[-1] += (f" The source notebook has changed since this run ({differ} of {len(now)} code cells "
                          "differ): the code below is the code that ran.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ trimming outputs
def _cap(text: str, max_lines: int = MAX_LINES, max_chars: int = MAX_CHARS) -> str:
    lines = text.splitlines(keepends=True)
    kept = "".join(lines[:max_lines])
    cut_lines = len(lines) - min(len(lines), max_lines)
    if len(kept) > max_chars:
        kept = kept[:max_chars].rstrip() + "\n"
        return kept + f"[... {len(text) - max_chars} more characters cut; see the executed notebook]\n"
    if cut_lines:
        return kept + f"[... {cut_lines} more lines cut; see the executed notebook]\n"
    return text


def _relative(text: str, roots: list[str]) -> str:
    for r in roots:
        text = text.replace(r + "/", "")
    return text


def _clean_output(o, roots: list[str]):
    """The output as the page shows it, or None to drop it."""
    kind = o.get("output_type")
    if kind == "stream":
        text = o.get("text", "")
        if o.get("name") == "stderr":
            text = "".join(ln for ln in text.splitlines(keepends=True) if not _NATIVE_LOG.match(ln))
        if not text.strip():
            return None
        o["text"] = _relative(text, roots)
        return o
    if kind == "error":
        return o
    data = o.get("data") or {}
    if WIDGET in data:
        plain = data.get("text/plain", "")
        if _PROGRESS.match(plain):
            return None
        o["data"] = {"text/markdown": "*(An interactive widget: open the notebook in Jupyter to use it.)*"}
        o["metadata"] = {}
        return o
    for mime in ("text/plain", "text/html", "text/markdown"):
        if isinstance(data.get(mime), str):
            data[mime] = _relative(data[mime], roots)
    if "text/html" in data:
        data["text/html"] = _STYLE.sub("", data["text/html"])
    if "text/plain" in data:
        data["text/plain"] = _cap(data["text/plain"])
    data.pop("application/json", None)
    return o


def _coalesce(outputs: list) -> list:
    """Consecutive stream outputs of the same name as one (then capped once)."""
    out = []
    for o in outputs:
        if (o.get("output_type") == "stream" and out and out[-1].get("output_type") == "stream"
                and out[-1].get("name") == o.get("name")):
            out[-1]["text"] += o["text"]
        else:
            out.append(o)
    for o in out:
        if o.get("output_type") == "stream":
            o["text"] = _cap(o["text"])
    return out


def trim(nb, roots: list[str]):
    """``nb`` (an nbformat notebook, modified in place) as the page shows it."""
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    nb.cells = [c for c in nb.cells if not _is_injected(c)]
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        if cell.cell_type != "code":
            continue
        outputs = [_clean_output(o, roots) for o in cell.get("outputs", [])]
        cell.outputs = _coalesce([o for o in outputs if o is not None])
    return nb


# ------------------------------------------------------------------------------------------------ rendering
def _inline_images_to_files(body: str, stem: str, files: dict[str, bytes]) -> str:
    """Base64 images that came inside HTML or Markdown outputs, written as files too."""
    def repl(m):
        ext = {"svg+xml": "svg", "jpeg": "jpg"}.get(m.group(1), m.group(1))
        name = f"{stem}_files/{stem}_inline_{len(files)}.{ext}"
        files[name] = base64.b64decode(re.sub(r"\s", "", m.group(2)))
        return name
    return _DATA_URI.sub(repl, body)


def render_notebook(path: Path, out: Path, *, run_label: str, source: Path | None = None,
                    roots: list[str] | None = None) -> tuple[Path, list[Path]]:
    """Render the executed notebook ``path`` to ``out/<stem>.md`` and its images to ``out/<stem>_files/``
    (emptied first). ``source`` is the repository's notebook (linked from the header and compared with the code
    that ran). Returns the page and the image files."""
    import nbformat
    from nbconvert import MarkdownExporter

    stem = path.stem
    out.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    source_nb = nbformat.read(source, as_version=4) if source is not None and source.exists() else None
    link_target = source if source is not None else repo_root() / "notebooks" / path.name
    link = Path(os.path.relpath(link_target.resolve(), out.resolve())).as_posix()
    head = header(nb, stem, run_label=run_label, source_link=link, source_nb=source_nb)
    trim(nb, roots if roots is not None else _repo_roots([nb], path.parent))

    body, resources = MarkdownExporter().from_notebook_node(
        nb, resources={"output_files_dir": f"{stem}_files", "unique_key": stem})
    files = dict(resources.get("outputs") or {})
    body = _inline_images_to_files(body, stem, files)
    body = re.sub(r"(?m)^[ \t]+$", "", body)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"

    files_dir = out / f"{stem}_files"
    shutil.rmtree(files_dir, ignore_errors=True)
    written = []
    for name, data in sorted(files.items()):
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        written.append(dest)
    page = out / f"{stem}.md"
    page.write_text(head + "\n" + body)
    return page, written


def _label(runs: Path) -> str:
    try:
        return runs.resolve().relative_to(repo_root()).as_posix()
    except ValueError:
        return runs.name


def render_run(runs: Path, out: Path, notebooks: Path | None = None) -> list[tuple[Path, list[Path]]]:
    """Render every numbered notebook of ``notebooks`` from its executed copy in ``runs`` into ``out``, plus an
    index ``out/README.md``. Raises :class:`MissingNotebooks` (and writes nothing) unless all have one."""
    import nbformat

    notebooks = Path(notebooks) if notebooks is not None else repo_root() / "notebooks"
    sources = numbered_notebooks(notebooks)
    if not sources:
        raise MissingNotebooks(f"{notebooks} holds no numbered notebook")
    problems = check_run(runs, notebooks)
    if problems:
        raise MissingNotebooks("refusing to publish a partial run:\n  " + "\n  ".join(problems))
    copies = [runs / s.name for s in sources]
    roots = _repo_roots([nbformat.read(p, as_version=4) for p in copies], runs)
    label = _label(runs)
    done = [render_notebook(p, out, run_label=label, source=s, roots=roots) for p, s in zip(copies, sources)]
    index = ["# Executed notebooks", "",
             f"The numbered notebooks as the run `{label}` executed them, with their figures and numbers, rendered "
             "by `python -m emi_lib.docs` (`make docs`, also the last step of `make demo`). The notebooks in "
             "`notebooks/` are committed without outputs.", ""]
    index += [f"- [{page.stem}]({page.name})" for page, _ in done]
    (out / "README.md").write_text("\n".join(index) + "\n")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(repo_root() / "runs" / "demo"), help="run folder of executed notebooks")
    ap.add_argument("--out", default=str(repo_root() / "docs" / "notebooks"), help="folder for the pages")
    ap.add_argument("--notebooks", default=str(repo_root() / "notebooks"), help="the numbered source notebooks")
    args = ap.parse_args(argv)
    try:
        done = render_run(Path(args.runs), Path(args.out), Path(args.notebooks))
    except MissingNotebooks as err:
        print(f"emi_lib.docs: {err}", file=sys.stderr)
        return 1
    for page, images in done:
        kb = sum(f.stat().st_size for f in images) / 1024
        print(f"{os.path.relpath(page)}: {page.stat().st_size / 1024:.1f} KB, {len(images)} images {kb:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
