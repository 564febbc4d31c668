# Builds the test guest's initrd: busybox, the init script, ACPI power handling,
# the kernel modules and the guest agent, as a newc cpio archive. Runs under busybox
# sh alone.
B=$src/busybox
$B mkdir tools
$B --install -s "$PWD/tools"
export PATH="$PWD/tools"
mkdir -p root/bin root/sbin root/etc/acpi root/lib/modules
cp "$B" root/bin/busybox
ln -s busybox root/bin/sh
cp "$src/guest/init" root/init
cp "$src/guest/power.sh" root/etc/acpi/power.sh
cp "$src/guest/acpid.conf" root/etc/acpid.conf
cp "$src"/guest/modules/*.ko root/lib/modules/
cp -a "$src/guest/agent/." root/  # qemu-ga and its libraries
chmod 755 root/init root/etc/acpi/power.sh
cd root
find . | cpio -o -H newc > "$out"
