# The flake apps that run clan-vm-manager against one flake:
#   nix run .#vm-start -- web   =   clan-vm-manager start --flake <that flake> web
# TOOL is the clan-vm-manager executable (a path, or a command name found on PATH);
# WRITESCRIPT name text makes an executable script (pkgs.writeShellScript, or a
# builtins-only stand-in where nixpkgs is not available); FLAKE is the flake whose
# clanVms the apps use, or null for the flake around the working directory.
{ tool, writeScript, flake ? null }:
let
  # Tasks that read definitions get the flake; the others act on created VMs only.
  tasks = {
    create = true;
    start = true;
    stop = false;
    restart = false;
    delete = false;
    list = true;
    show = true;
    status = false;
    snapshot = false;
    revert = false;
    console = false;
    history = false;
    boot-test = true;
  };
  app = task: withFlake: {
    type = "app";
    program = "${writeScript "vm-${task}" ''
      exec ${tool} ${task} ${if withFlake && flake != null then "--flake ${flake}" else ""} "$@"
    ''}";
  };
in
builtins.listToAttrs (
  map (task: {
    name = "vm-${task}";
    value = app task tasks.${task};
  }) (builtins.attrNames tasks)
)
