# The Python application, built with nixpkgs' Python packaging; qemu, nix and mkfs.ext4
# (rootFilesystem) on its PATH.
{ lib, buildPythonApplication, setuptools, pydantic, invoke, sh, pyyaml, qemu, nix, e2fsprogs }:
buildPythonApplication {
  pname = "clan-vm-tasks";
  version = "0.1.0";
  pyproject = true;
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../pyproject.toml ../README.md ../clan_vm_tasks ];
  };
  build-system = [ setuptools ];
  dependencies = [ pydantic invoke sh pyyaml ];
  # pyproject.toml pins exact versions for pip; nixpkgs has its own.
  pythonRelaxDeps = true;
  makeWrapperArgs = [ "--prefix" "PATH" ":" (lib.makeBinPath [ qemu nix e2fsprogs ]) ];
  pythonImportsCheck = [ "clan_vm_tasks.cli" ];
  meta.mainProgram = "clan-vm-manager";
}
