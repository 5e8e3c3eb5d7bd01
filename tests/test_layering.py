"""The import graph of kws_tf/ and data_prep/: who may import whom, and no cycles
between modules or between packages.

Edges are read with ``ast`` from every import statement of a module, those
inside functions included (a lazy import still ties two modules together).
``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
``a.b``; imports of modules outside the two packages are left out.
"""
import ast
import os
from typing import Dict, List, Set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("kws_tf", "data_prep")


def module_files() -> Dict[str, str]:
  """Dotted module name -> file of every module under ``PACKAGES``."""
  modules = {}
  for package in PACKAGES:
    for root, _, names in os.walk(os.path.join(REPO, package)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(root, name)
          parts = os.path.relpath(path, REPO)[:-len(".py")].split(os.sep)
          if parts[-1] == "__init__":
            parts = parts[:-1]
          modules[".".join(parts)] = path
  return modules


def imports_of(name: str, path: str, modules: Dict[str, str]) -> Set[str]:
  """The modules of ``modules`` that module ``name`` (file ``path``) imports."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  targets = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = name.split(".")
        if not path.endswith("__init__.py"):
          package = package[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
      targets += [f"{base}.{alias.name}" for alias in node.names]
  found = set()
  for target in targets:
    while target and target not in modules:
      target = target.rpartition(".")[0]
    if target and target != name:
      found.add(target)
  return found


def import_graph() -> Dict[str, Set[str]]:
  """Module -> the modules it imports, over ``PACKAGES``."""
  modules = module_files()
  return {name: imports_of(name, path, modules) for name, path in modules.items()}


def _within(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
  """One cycle ``[a, b, ..., a]`` per back edge met by a depth-first search."""
  state: Dict[str, int] = {}  # 1: on the current path, 2: done
  path: List[str] = []
  cycles = []

  def visit(module):
    state[module] = 1
    path.append(module)
    for other in sorted(graph.get(module, ())):
      if state.get(other) == 1:
        cycles.append(path[path.index(other):] + [other])
      elif other not in state:
        visit(other)
    path.pop()
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module)
  return cycles


def _edges(graph, source_rule, target_rule) -> List[str]:
  return sorted(f"{a} imports {b}" for a, targets in graph.items() for b in targets
                if source_rule(a) and target_rule(b))


def test_kws_tf_does_not_import_data_prep_or_binaries():
  graph = import_graph()
  bad = _edges(graph, lambda a: _within(a, "kws_tf"), lambda b: _within(b, "data_prep"))
  bad += _edges(graph, lambda a: _within(a, "kws_tf") and not _within(a, "kws_tf.bin"),
                lambda b: _within(b, "kws_tf.bin"))
  assert not bad, "library modules import layers above them:\n" + "\n".join(bad)


def test_only_training_and_binaries_import_training():
  graph = import_graph()
  bad = _edges(graph, lambda a: not (_within(a, "kws_tf.training") or _within(a, "kws_tf.bin")),
               lambda b: _within(b, "kws_tf.training"))
  assert not bad, ("kws_tf.training is imported from outside it and kws_tf.bin (a trained "
                   "model dir is kws_tf.model_dir's):\n" + "\n".join(bad))


def package_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
  """The graph between packages and top-level modules: ``kws_tf.export.qat`` is
  ``kws_tf.export``, ``kws_tf.data`` stays ``kws_tf.data``."""
  def unit(module):
    return ".".join(module.split(".")[:2])

  units: Dict[str, Set[str]] = {}
  for a, targets in graph.items():
    units.setdefault(unit(a), set()).update(unit(b) for b in targets if unit(b) != unit(a))
  return units


def test_no_import_cycles():
  graph = import_graph()
  cycles = find_cycles(graph) + find_cycles(package_graph(graph))
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
  package = tmp_path / "pkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "a.py").write_text("def f():\n  from . import b\n  from .b import g\n")
  (package / "b.py").write_text("import pkg.a\nimport os\n")
  modules = {"pkg": str(package / "__init__.py"), "pkg.a": str(package / "a.py"),
             "pkg.b": str(package / "b.py")}
  graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
  assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
  assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
