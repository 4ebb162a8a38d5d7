"""The methods' authors' code, read from their own repositories at pinned commits.

The reference scripts (make_reducer_reference.py, make_method_reference.py) run each method's
selection code exactly as its authors released it. That code is not ours and is not copied into
this repository (some of it is CC BY-NC 4.0, one repository states no licence): the scripts read
it from git clones of the authors' repositories, at the commits pinned in REPOS (whatever is
checked out), take the named functions, classes or line ranges, and execute them unchanged.
Line ranges are pinned by a SHA-256 prefix of their text, so a different file fails loudly.

Where the clones are: the folder in $TOKENLENS_AUTHORS, else `scripts/authors-src/` (ignored by
git). Clone each repository named in REPOS (owner/name) into it, as `<owner>+<name>`,
`<owner>/<name>` or `<name>`; bare mirrors (`<owner>+<name>/repo`) work too:

    mkdir -p scripts/authors-src && cd scripts/authors-src
    git clone <git host>/facebookresearch/ToMe facebookresearch+ToMe   # ... one per REPOS entry

Only the fixtures these scripts write are committed; the Rust tests read those, never this.
"""

import ast
import hashlib
import linecache
import os
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Repo:
    name: str  # owner/name
    commit: str
    licence: str


REPOS = {
    "tome": Repo("facebookresearch/ToMe", "af95e4b1befa172dadccd8c81e223b10090f9579", "CC BY-NC 4.0"),
    # DivPrune's own repository (vbdi/divprune) is not reachable here; llmc's module-level copy
    # matches, line for line, the method quoted in the LLaVA forks of the vbdi code.
    "divprune": Repo("ModelTC/llmc", "50da6b61c4c577441c7d45e45652719f237955c5", "Apache-2.0"),
    "pitome": Repo("hchautran/PiToMe", "550b5deed94aadfeac28bfbe381d87e672044a40", "CC BY-NC 4.0"),
    "evit": Repo("youweiliang/evit", "5ca95a7cf4a8637193284895c5bc0dd9dc365982", "Apache-2.0"),
    "fastervlm": Repo("Theia-4869/FasterVLM", "f5d5f12037e105a51865ecb4b28a73cd86eb4921", "Apache-2.0"),
    "hiprune": Repo("Danielement321/HiPrune", "6e83a1240874e99a25df34f54221a29bb24b7bc2", "MIT"),
    "fastv": Repo("pkunlp-icler/FastV", "d1659729b5bf1be225e99ee15783deeea80f63b1", "none stated"),
    "sparsevlm": Repo("Gumpest/SparseVLMs", "26a5f48813c46cd1c7364160354e7fdd3febaa67", "Apache-2.0"),
    "mmtok": Repo("Ironieser/MMTok", "d1522cda0ac4470589446b5f220534d892db4c62", "Apache-2.0"),
}

ROOT = Path(__file__).resolve().parent


def clones_folder():
    return Path(os.environ.get("TOKENLENS_AUTHORS", ROOT / "authors-src"))


def _clone(repo):
    owner, name = repo.name.split("/")
    base = clones_folder()
    for candidate in (base / f"{owner}+{name}" / "repo", base / f"{owner}+{name}", base / owner / name, base / name):
        if candidate.is_dir():
            return candidate
    raise SystemExit(
        f"the authors' repository {repo.name} is not in {base}: clone it there (see scripts/authors.py), "
        f"or point TOKENLENS_AUTHORS at a folder of clones"
    )


def read(key, path):
    """The text of `path` in REPOS[key] at its pinned commit."""
    repo = REPOS[key]
    out = subprocess.run(
        ["git", "-C", str(_clone(repo)), "show", f"{repo.commit}:{path}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{repo.name} @ {repo.commit[:12]}: cannot read {path}: {out.stderr.strip()}")
    return out.stdout


def _segment(text, node):
    lines = text.splitlines(keepends=True)
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return textwrap.dedent("".join(lines[first - 1 : node.end_lineno]))


def defs(key, path, *names, within=None):
    """The source of the named top-level functions and classes of a file (or the methods of
    class `within`), decorators included, in the order asked, each dedented."""
    text = read(key, path)
    body = ast.parse(text).body
    if within is not None:
        classes = [n for n in body if isinstance(n, ast.ClassDef) and n.name == within]
        if len(classes) != 1:
            raise SystemExit(f"{REPOS[key].name}:{path}: no single class {within}")
        body = classes[0].body
    found = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            if node.name in found:
                raise SystemExit(f"{REPOS[key].name}:{path}: {node.name} is defined twice")
            found[node.name] = _segment(text, node)
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{REPOS[key].name}:{path}: not found: {', '.join(missing)}")
    return "\n\n".join(found[n] for n in names) + "\n"


def lines(key, path, first, last, sha256_prefix, indent=0):
    """Lines first..last (1-based, inclusive) of a file, checked by the SHA-256 of their text,
    dedented and then indented by `indent` spaces (to sit inside one of our functions)."""
    text = read(key, path).splitlines(keepends=True)[first - 1 : last]
    block = "".join(text)
    digest = hashlib.sha256(block.encode()).hexdigest()
    if not digest.startswith(sha256_prefix):
        raise SystemExit(f"{REPOS[key].name}:{path}:{first}-{last} changed (sha256 {digest[:16]})")
    return textwrap.indent(textwrap.dedent(block), " " * indent)


def run(text, namespace, label):
    """Execute source text in `namespace` under a pseudo file name that inspect, tracebacks and
    torch.jit.script can read back (they look source up through linecache)."""
    filename = f"<authors:{label}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    exec(compile(text, filename, "exec"), namespace)
    return namespace
