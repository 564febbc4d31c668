"""VMs on libvirt hosts, this machine's (``qemu:///system``) or another's (``qemu+ssh://``).

``xml`` builds the domain from a ``VMConfig`` (a pure function), ``connection`` reaches a
host with every call bounded in time, ``storage`` keeps disks, boot files and console
logs as volumes of the host's ``default`` pool, ``domain`` defines and reads domains,
``network`` adds port forwards, ``console`` streams the serial console, ``agent`` talks
to the guest agent; ``machine`` is the ``Machine`` and ``backend`` the ``HostedBackend``.
libvirt-python is imported on first use only.
"""
