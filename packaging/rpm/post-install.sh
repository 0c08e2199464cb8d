# $1: 1 on a first install, 2 on an upgrade. Units are enabled by the
# distribution's preset policy, as RPM packages do; an upgrade never
# restarts warren (a restart refuses clients while it drains).
if [ "$1" -eq 1 ]; then
    chgrp warren /etc/warren
    chmod 0750 /etc/warren
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl preset warren.service >/dev/null 2>&1 || :
    fi
fi
exit 0
