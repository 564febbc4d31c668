"""The package's layout holds: layers only import downwards, no cycles, small modules, task
modules independent of each other, and no heavy import on the ``list`` path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.import_graph import PACKAGE, Module, cycles, modules

# Lowest first. A module may import its own package and any package of a lower layer.
LAYERS = [
    ["", "errors", "render"],  # "" is the package itself (its version)
    ["names"],
    ["models"],
    ["schema"],  # pydantic: what validates a definition before it is written
    ["state"],
    ["backends"],
    ["vm"],
    ["nix", "clan"],
    ["web"],  # the dashboard: over the same operations as the tasks, served by one of them
    ["tasks"],
    ["cli", "lifecycle"],  # the entry points: the command line and the Python API
    ["__main__"],
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_LINES = 450
MAX_TOP_LEVEL = 8


def unit(module: str) -> str:
    """The layer unit of a module: its subpackage, or the module itself at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer() -> None:
    graph = modules()
    assert {unit(m) for m in graph} <= set(RANK), "a new package needs a place in LAYERS"


def test_no_import_cycles_counting_lazy_imports() -> None:
    assert cycles(modules()) == []


def test_imports_only_go_down_the_layers() -> None:
    upward = [
        f"{m.name} -> {target}"
        for m in modules().values()
        for target in m.imports
        if unit(target) != unit(m.name) and RANK[unit(target)] >= RANK[unit(m.name)]
    ]
    assert upward == []


def test_modules_are_small_and_the_top_is_only_entry_points_and_shared_things() -> None:
    graph = modules()
    large = {m.name: m.lines for m in graph.values() if m.lines > MAX_LINES}
    assert large == {}
    top = sorted(m.path.name for m in graph.values() if m.path.parent.name == PACKAGE)
    assert len(top) <= MAX_TOP_LEVEL, top


def test_task_modules_import_no_other_task_module() -> None:
    graph = modules()

    def task_imports(module: Module) -> set[str]:
        return {t for t in module.imports if t.startswith(f"{PACKAGE}.tasks")}

    offenders = {
        m.name: sorted(task_imports(m) - {f"{PACKAGE}.tasks.common"})
        for m in graph.values()
        if m.name.startswith(f"{PACKAGE}.tasks.") and m.name != f"{PACKAGE}.tasks.common"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_is_named_like_a_standard_library_module() -> None:
    """``backends/libvirt/xml.py`` beside ``import xml.etree``, ``vm/inspect.py``: a reader
    (and a careless import) takes one for the other."""
    clashing = sorted(
        m.name for m in modules().values() if m.name.rsplit(".", 1)[-1] in sys.stdlib_module_names
    )
    assert clashing == []


CONCRETE = (f"{PACKAGE}.backends.qemu", f"{PACKAGE}.backends.libvirt")
CHOOSER = f"{PACKAGE}.vm.machines"  # the one place that chooses a backend


def test_only_the_chooser_imports_a_concrete_backend() -> None:
    """Operations, integrations and tasks speak to the backend interface (``backends.base``)
    and the neutral helpers beside it; which hypervisor runs a VM is ``vm.machines``'s."""
    offenders = sorted(
        f"{m.name} -> {target}"
        for m in modules().values()
        if not m.name.startswith(f"{PACKAGE}.backends") and m.name != CHOOSER
        for target in m.imports
        if target.startswith(CONCRETE)
    )
    assert offenders == []


def test_nix_imports_nothing_of_the_libvirt_backend() -> None:
    offenders = sorted(
        f"{m.name} -> {target}"
        for m in modules().values()
        if m.name.startswith(f"{PACKAGE}.nix")
        for target in m.imports
        if target.startswith(f"{PACKAGE}.backends.libvirt")
    )
    assert offenders == []


def test_the_backends_share_only_neutral_modules() -> None:
    """Neither backend imports the other: what both need (qemu-img, ssh) is beside them."""
    qemu, libvirt = CONCRETE
    offenders = sorted(
        f"{m.name} -> {target}"
        for m in modules().values()
        for own, other in ((qemu, libvirt), (libvirt, qemu))
        if m.name.startswith(own)
        for target in m.imports
        if target.startswith(other)
    )
    assert offenders == []


def test_operations_never_run_qemu_img() -> None:
    image = f"{PACKAGE}.backends.image"
    offenders = sorted(m.name for m in modules().values() if image in m.imports)
    assert all(name.startswith(f"{PACKAGE}.backends") for name in offenders), offenders


# What a fast command must not pay for.
HEAVY = ("invoke", "yaml", "asyncio", "pydantic", "qemu", "sh", "libvirt")
HEAVY += ("clan_vm_tasks.models", "clan_vm_tasks.schema", "clan_vm_tasks.nix")


def test_list_imports_nothing_heavy(tmp_path: Path) -> None:
    """``list`` over a stopped VM and one recorded running whose process is gone."""
    state = tmp_path / "state"
    for name, status in (("idle", "stopped"), ("gone", "running")):
        vm = state / "vms" / name
        vm.mkdir(parents=True)
        config = {"name": name, "cpus": 1, "memory": 64, "disk_size": 64, "network": {}}
        (vm / "config.json").write_text(json.dumps(config))
        record = {"status": status, "pid": 1, "pid_start": 1} if status == "running" else {}
        (vm / "state.json").write_text(json.dumps(record))
    probe = (
        "import sys\n"
        "from clan_vm_tasks.cli import main\n"
        "try:\n"
        "    main(['clan-vm-manager', 'list', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"CLAN_VM_STATE_DIR": str(state), "CLAN_VM_CONFIG": "/nonexistent", "HOME": "/"},
        check=True,
    )
    listed = {vm["name"]: vm["state"] for vm in json.loads(result.stdout)}
    assert listed == {"idle": "stopped", "gone": "stopped"}
    loaded = result.stderr.split()
    assert "clan_vm_tasks.vm.listing" in loaded
    assert [m for m in loaded if m in HEAVY or m.startswith(tuple(f"{h}." for h in HEAVY))] == []
