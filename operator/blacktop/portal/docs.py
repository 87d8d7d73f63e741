"""A golden path's documentation: the README.md in its module folder, rendered to HTML.

Markdown is rendered by markdown-it-py (CommonMark, plus tables and strikethrough) with raw HTML
disabled, so a README can never inject markup or script into the portal; links keep
markdown-it's own safety check (no ``javascript:`` and the like). The module is resolved under
the operator's modules root exactly as provisioning resolves it (never outside it). Rendered
pages are cached by file, size and modification time: a README edited on disk shows at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

from blacktop.terraform import module as modules

README_NAMES = ("README.md", "readme.md", "README.markdown")
MAX_README_BYTES = 256 * 1024


@dataclass(frozen=True)
class Documentation:
    """The rendered README (``html`` empty when there is none) or why there is none."""

    html: str
    source: str  # the file, relative to the modules root, for "edit this page"
    missing: str  # why there is nothing to show (empty when there is)


_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
_LOCK = threading.Lock()
_CACHE: dict[tuple[str, int, int], str] = {}
_CACHE_LIMIT = 256


def render_markdown(text: str) -> str:
    """Markdown to HTML, raw HTML escaped, headings one level down (the page's own title is the h1)."""
    env: dict[str, object] = {}
    tokens = _MARKDOWN.parse(text, env)
    for token in tokens:
        if token.type in ("heading_open", "heading_close") and token.tag in ("h1", "h2", "h3", "h4", "h5"):
            token.tag = f"h{int(token.tag[1]) + 1}"
    html: str = _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, env)
    return html


def _render_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    raw = path.read_bytes()
    note = ""
    if len(raw) > MAX_README_BYTES:
        raw, note = raw[:MAX_README_BYTES], f"\n\n*(cut at {MAX_README_BYTES // 1024} KiB)*\n"
    html = render_markdown(raw.decode("utf-8", errors="replace") + note)
    with _LOCK:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = html
    return html


def documentation(root: Path, module: str) -> Documentation:
    """The module's README rendered (blocking file I/O: call it in a thread)."""
    try:
        folder = modules.resolve(root, module)
    except modules.ModuleError as exc:
        return Documentation("", "", str(exc))
    for name in README_NAMES:
        path = folder / name
        # A README that is a symlink out of the modules root is not followed (same rule as modules).
        if path.is_file() and path.resolve().is_relative_to(root.resolve()):
            return Documentation(_render_file(path), f"{module}/{name}", "")
    return Documentation("", "", f"module {module!r} has no README.md; the platform team can add {module}/README.md")
