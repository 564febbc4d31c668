"""The generated libvirt XML, pinned: a change here is a change users will see (as the QEMU
command line is pinned in test_argv)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from clan_vm_tasks.backends.libvirt import domain_xml
from clan_vm_tasks.models import NetworkConfig, PortForward, Share, VMConfig
from clan_vm_tasks.schema import validate


def plan(config: VMConfig, domain_type: str = "qemu", **extra: str) -> domain_xml.DomainPlan:
    kernel = "/var/lib/libvirt/images/web.kernel-0123" if config.kernel else None
    initrd = "/var/lib/libvirt/images/web.initrd-4567" if config.initrd else None
    return domain_xml.DomainPlan(
        config=config,
        domain_type=domain_type,
        mac="02:00:00:00:00:01",
        pool="default",
        disk_volume="web.qcow2",
        kernel=kernel,
        initrd=initrd,
        console_log="/var/lib/libvirt/images/web.console.log",
        owner="laptop:/home/me/.local/state/clan-vm",
        **extra,
    )


def test_direct_kernel_boot_with_user_networking() -> None:
    config = VMConfig(
        name="web",
        cpus=2,
        memory=512,
        kernel=Path("/k/bzImage"),
        initrd=Path("/k/initrd"),
        append="console=ttyS0",
        network=NetworkConfig(forward_ports=[PortForward(host_port=2222, guest_port=22)]),
    )
    assert domain_xml.domain_xml(plan(config)) == (
        """<domain xmlns:clan="https://clan.lol/xmlns/clan-vm-tasks/1" type="qemu">
  <name>web</name>
  <description>a VM of clan-vm-tasks</description>
  <metadata>
    <clan:vm>
      <clan:owner>laptop:/home/me/.local/state/clan-vm</clan:owner>
    </clan:vm>
  </metadata>
  <memory unit="MiB">512</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>
    <kernel>/var/lib/libvirt/images/web.kernel-0123</kernel>
    <initrd>/var/lib/libvirt/images/web.initrd-4567</initrd>
    <cmdline>console=ttyS0 clan.hostname=web</cmdline>
  </os>
  <features>
    <acpi />
  </features>
  <cpu mode="maximum" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type="volume" device="disk">
      <driver name="qemu" type="qcow2" />
      <source pool="default" volume="web.qcow2" />
      <target dev="vda" bus="virtio" />
      <serial>root</serial>
    </disk>
    <interface type="user">
      <mac address="02:00:00:00:00:01" />
      <model type="virtio" />
    </interface>
    <serial type="pty">
      <log file="/var/lib/libvirt/images/web.console.log" append="off" />
      <target port="0" />
    </serial>
    <console type="pty">
      <target type="serial" port="0" />
    </console>
    <channel type="unix">
      <target type="virtio" name="org.qemu.guest_agent.0" />
    </channel>
    <memballoon model="none" />
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
    </rng>
  </devices>
</domain>
"""
    )


def test_kvm_uses_the_host_cpu_and_a_redefinition_keeps_the_uuid() -> None:
    uuid = "2f31065a-e1d4-4251-921a-613d5add29dd"
    text = domain_xml.domain_xml(plan(VMConfig(name="web"), "kvm", uuid=uuid))
    assert text.startswith('<domain xmlns:clan="https://clan.lol/xmlns/clan-vm-tasks/1" type="kvm"')
    assert '<cpu mode="host-passthrough" />' in text
    assert f"<name>web</name>\n  <uuid>{uuid}</uuid>" in text


def test_bridge_tap_and_no_networking() -> None:
    bridged = domain_xml.domain_xml(
        plan(VMConfig(name="web", network=NetworkConfig(mode="bridge", bridge="br7")))
    )
    assert '<interface type="bridge">\n      <source bridge="br7" />' in bridged
    tapped = domain_xml.domain_xml(
        plan(VMConfig(name="web", network=NetworkConfig(mode="tap", tap="t7")))
    )
    assert '<interface type="ethernet">\n      <target dev="t7" managed="no" />' in tapped
    none = domain_xml.domain_xml(plan(VMConfig(name="web", network=NetworkConfig(mode="none"))))
    assert "<interface" not in none


def test_no_kernel_no_direct_boot_no_agent_and_text_is_escaped() -> None:
    text = domain_xml.domain_xml(plan(VMConfig(name="web", agent=False)))
    assert "<kernel>" not in text and "<cmdline>" not in text and "<channel" not in text
    odd = VMConfig(name="web", kernel=Path("/k"), append="a<b&c")
    assert "<cmdline>a&lt;b&amp;c clan.hostname=web</cmdline>" in domain_xml.domain_xml(plan(odd))


def test_what_is_read_back_from_a_domain_and_its_snapshots() -> None:
    text = domain_xml.domain_xml(plan(VMConfig(name="web")))
    assert domain_xml.owner(text) == "laptop:/home/me/.local/state/clan-vm"
    assert domain_xml.owner("<domain><name>other</name></domain>") is None
    assert domain_xml.owner("not xml") is None
    assert domain_xml.disk_volume(text) == ("default", "web.qcow2")
    running = (
        "<domainsnapshot><name>s1</name><state>running</state><creationTime>1700000000"
        "</creationTime><memory snapshot='internal'/><domain><memory unit='KiB'>262144"
        "</memory></domain></domainsnapshot>"
    )
    assert domain_xml.snapshot_facts(running) == (1700000000, True, 256 << 20)
    stopped = running.replace("running", "shutoff").replace("'internal'", "'no'")
    assert domain_xml.snapshot_facts(stopped)[1] is False


def test_volumes_and_snapshots() -> None:
    assert domain_xml.volume_xml("web.qcow2", 64 << 20, "qcow2") == (
        '<volume><name>web.qcow2</name><capacity unit="bytes">67108864</capacity>'
        '<target><format type="qcow2" /><compat>1.1</compat></target></volume>'
    )
    assert "<compat>" not in domain_xml.volume_xml("web.kernel-0123", 1 << 20, "raw")
    assert domain_xml.snapshot_xml("s1") == "<domainsnapshot><name>s1</name></domainsnapshot>"


def test_a_shared_store_path_is_a_read_only_9p_filesystem() -> None:
    config = VMConfig(
        name="web",
        shares={"store": Share(source=Path("/nix/store/abc-data"), target="/data")},
    )
    text = domain_xml.domain_xml(plan(config))
    assert (
        """    <filesystem type="mount" accessmode="mapped">
      <source dir="/nix/store/abc-data" />
      <target dir="store" />
      <readonly />
    </filesystem>
    <interface type="user">"""
        in text
    )


def test_a_nixos_vms_shares_are_the_hosts_store_and_directories_of_its_own_there() -> None:
    config = VMConfig(
        name="web",
        shares={
            "nix-store": Share(source=Path("/nix/store"), target="/nix/.ro-store"),
            "xchg": Share(source=None, target="/tmp/xchg", read_only=False, security_model="none"),
        },
    )
    own = {"xchg": "/var/lib/libvirt/images/web.share-xchg"}
    text = domain_xml.domain_xml(dataclasses.replace(plan(config), share_dirs=own))
    assert (
        """    <filesystem type="mount" accessmode="mapped">
      <source dir="/nix/store" />
      <target dir="nix-store" />
      <readonly />
    </filesystem>
    <filesystem type="mount" accessmode="squash">
      <source dir="/var/lib/libvirt/images/web.share-xchg" />
      <target dir="xchg" />
    </filesystem>
    <interface type="user">"""
        in text
    )
    assert domain_xml.directory_volume_xml("web.share-xchg") == (
        '<volume type="dir"><name>web.share-xchg</name><capacity unit="bytes">0</capacity>'
        '<target><format type="dir" /><permissions><mode>0755</mode></permissions></target>'
        "</volume>"
    )


def test_only_read_only_9p_shares_of_store_paths_go_to_a_libvirt_host() -> None:
    def problem(share: Share, resolved: str | None = None) -> str:
        return str(domain_xml.share_problem(share, resolved or str(share.source or "/")))

    store = Path("/nix/store/abc-data")
    assert domain_xml.share_problem(Share(source=store), str(store)) is None
    assert domain_xml.share_problem(Share(source=Path("/nix/store")), "/nix/store") is None
    # The VM's own directory is made on the host, writable or not.
    assert domain_xml.share_problem(Share(source=None, read_only=False), "/") is None
    assert "virtiofs" in problem(Share(source=None, type="virtiofs"))
    assert "directory of this machine" in problem(Share(source=Path("/srv/data")))
    assert "directory of this machine" in problem(Share(source=Path("/nix/storage")))
    # A store path that is a link out of the store is the directory it leads to.
    assert "directory of this machine" in problem(Share(source=store), "/root")
    assert "read-only" in problem(Share(source=store, read_only=False))
    assert "virtiofs" in problem(Share(source=store, type="virtiofs"))
    assert "mapped-file" in problem(Share(source=store, security_model="mapped-file"))


@pytest.mark.parametrize(
    "network",
    [
        {"restrict": True},
        {"forwardPorts": [{"hostPort": 1, "guestPort": 2, "guestAddress": "10.0.2.9"}]},
    ],
)
def test_what_a_libvirt_host_cannot_give_a_nixos_vm_is_refused(network: dict[str, Any]) -> None:
    from clan_vm_tasks.backends.libvirt.backend import LibvirtBackend
    from clan_vm_tasks.errors import InvalidInput

    config = validate(VMConfig, {"name": "web", "network": network}, "VM")
    with pytest.raises(InvalidInput, match="restricted network or a forward to a guest address"):
        LibvirtBackend("hv1", "qemu+ssh://root@hv1/system").check_config(config)
