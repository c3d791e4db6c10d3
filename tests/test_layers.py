"""The package imports one way: core -> text -> data -> models -> weights -> tasks -> run/workdir -> jobs/ (train,
evaluate, inference, ...) -> cli, with no cycle between modules and no hidden imports inside functions."""

import ast
import pathlib

import cxrjax

PACKAGE = pathlib.Path(cxrjax.__file__).parent

# The layer of each top-level part; a module may import its own layer or lower ones only.
LAYERS = {
  "core": 0,  # The groups' __init__ modules import nothing.
  "run": 0,
  "core.errors": 0,
  "core.files": 0,
  "core.registry": 0,
  "text": 1,
  "ops": 1,
  "run.figures": 1,
  "run.summaries": 1,
  "data": 2,
  "metrics": 2,
  "models": 3,
  "core.decoding": 3,
  "core.optim": 3,
  "core.sharding": 3,
  "core.config": 3,
  "core.recipes": 3,
  "weights": 4,
  "tasks": 5,
  "evaluators": 5,
  "run.workdir": 6,
  "jobs": 7,
  "cli": 8,
}
# The groups of top-level modules (what `ls cxrjax` shows): a package whose modules sit in several layers.
GROUPS = {"core", "run"}
# Optional heavy dependencies that may be imported inside a function (each with its reason in the code).
LAZY_IMPORTS_ALLOWED = {
  "torch",
  "keras",
  "h5py",
  "transformers",
  "nltk",
}  # METEOR's fallback without Java: loads WordNet, used on few machines.


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
  return {module_name(path): ast.parse(path.read_text(), str(path)) for path in PACKAGE.rglob("*.py")}


def imported_modules(tree: ast.Module, name: str, known: set[str]) -> list[tuple[str, int, bool]]:
  """(cxrjax module imported, line, inside a function) for every import in `tree`."""
  package = name if name in known and any(k.startswith(name + ".") for k in known) else name.rpartition(".")[0]
  found = []
  function_lines = {
    n.lineno
    for f in ast.walk(tree)
    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
    for n in ast.walk(f)
    if isinstance(n, (ast.Import, ast.ImportFrom))
  }
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    else:
      continue
    for target in targets:
      found.append((target, node.lineno, node.lineno in function_lines))
  return found


def part(module: str) -> str:
  """The key of LAYERS a module belongs to: its top-level part, or its module within a group."""
  names = module.split(".")[1:]
  return ".".join(names[:2]) if names and names[0] in GROUPS else ".".join(names[:1])


def layer(module: str) -> int:
  return LAYERS[part(module)]


def import_graph() -> dict[str, set[str]]:
  trees = modules()
  known = set(trees)
  graph = {}
  for name, tree in trees.items():
    graph[name] = {
      target
      for target, _, _ in imported_modules(tree, name, known)
      if target.startswith("cxrjax.") and target in known and target != name
    }
  return graph


def test_every_part_of_the_package_has_a_layer():
  parts = {part(name) for name in modules() if "." in name}
  assert parts <= set(LAYERS), f"parts without a layer: {sorted(parts - set(LAYERS))}"


def test_imports_never_go_up_a_layer():
  upward = [
    f"{source} ({layer(source)}) imports {target} ({layer(target)})"
    for source, targets in import_graph().items()
    if "." in source
    for target in targets
    if layer(target) > layer(source)
  ]
  assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules():
  graph = import_graph()
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    for target in sorted(graph.get(node, ())):
      if target.startswith(node + "."):
        continue  # A package's __init__ importing its own modules is not a cycle.
      if state.get(target) == "open":
        cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
      elif target not in state:
        visit(target, stack + [target])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_inside_functions_are_only_optional_heavy_dependencies():
  trees = modules()
  hidden = [
    f"{name}:{line} imports {target}"
    for name, tree in trees.items()
    for target, line, inside in imported_modules(tree, name, set(trees))
    if inside and target.split(".")[0] not in LAZY_IMPORTS_ALLOWED
  ]
  assert not hidden, "imports inside functions:\n" + "\n".join(hidden)


def test_the_checker_sees_a_planted_cycle(tmp_path):
  """The cycle search is not vacuous: a two-module cycle is reported."""
  graph = {"cxrjax.a": {"cxrjax.b"}, "cxrjax.b": {"cxrjax.a"}}
  seen = []

  def visit(node, stack, state):
    state[node] = "open"
    for target in graph[node]:
      if state.get(target) == "open":
        seen.append(stack + [target])
      elif target not in state:
        visit(target, stack + [target], state)
    state[node] = "done"

  visit("cxrjax.a", ["cxrjax.a"], {})
  assert seen == [["cxrjax.a", "cxrjax.b", "cxrjax.a"]]


def test_the_runtime_imports_no_test_only_reference():
  """torch and transformers are the tests' references: importing every module of the package (torch is
  installed here) loads neither, nor TensorFlow."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  names = sorted(n for n in modules() if n != "cxrjax.__main__")
  code = (
    "import importlib, sys\n"
    f"for name in {names!r}: importlib.import_module(name)\n"
    "print(sorted(m for m in ('torch', 'transformers', 'tensorflow', 'keras') if m in sys.modules))"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
  assert result.stdout.strip() == "[]"
