#!/bin/sh
# Installs a tidewell .deb into a throw-away copy of this machine (an
# overlay over / in private mount and network namespaces, so nothing is left
# on the host) and checks the package's life cycle:
#
#   install (postinst: user, conffile group, enable, start only after
#   `config check`), the shipped config passes, the unit verifies, the
#   gateway runs as the package's user and writes its log; a broken config
#   is never restarted into; `dpkg -r` keeps the data, `--purge` deletes it.
#
#   unshare --mount --net --fork sh tests/package/install.sh DEB
# Each step prints "ok: ..."; the first failure exits non-zero.
set -eu

if [ "${1:-}" != inner ]; then
    deb="$(readlink -f "$1")"
    self="$(readlink -f "$0")"
    base="$(mktemp -d)"
    mount -t tmpfs tmpfs "$base"
    mkdir -p "$base/upper" "$base/work" "$base/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
    mount -t proc proc "$base/root/proc"
    mount --rbind /dev "$base/root/dev"
    mount -t tmpfs tmpfs "$base/root/run"
    mount -t tmpfs tmpfs "$base/root/tmp"
    cp "$deb" "$base/root/tmp/tidewell.deb"
    cp "$self" "$base/root/tmp/install.sh"
    exec chroot "$base/root" /bin/sh /tmp/install.sh inner
fi

fail() { echo "FAIL: $*"; exit 1; }
ip link set lo up

# A running systemd that only records what the maintainer scripts ask of
# it: the scripts see /run/systemd/system and find these first on dpkg's
# PATH. Offline work on unit files (`systemctl --root=/ preset`, which
# deb-systemd-helper enable runs) goes to the real systemctl.
mkdir -p /run/systemd/system
printf '#!/bin/sh\necho "deb-systemd-invoke $*" >> /tmp/invoked\n' > /usr/local/sbin/deb-systemd-invoke
printf '#!/bin/sh\ncase "$*" in *--root=*) exec /bin/systemctl "$@";; esac\necho "systemctl $*" >> /tmp/invoked\n' \
    > /usr/local/sbin/systemctl
chmod 0755 /usr/local/sbin/deb-systemd-invoke /usr/local/sbin/systemctl

getent passwd tidewell >/dev/null && fail "a tidewell user exists before the install"
dpkg -i /tmp/tidewell.deb > /tmp/dpkg.out 2>&1 || { cat /tmp/dpkg.out; fail "dpkg -i"; }
echo "ok: dpkg -i"
grep -qx "deb-systemd-invoke start tidewell.service" /tmp/invoked || { cat /tmp/invoked; fail "not started after install"; }
[ -L /etc/systemd/system/multi-user.target.wants/tidewell.service ] || fail "unit not enabled"
echo "ok: enabled and started (the config passed its check first)"
getent passwd tidewell >/dev/null || fail "no tidewell system user"
[ "$(stat -c '%U:%G %a' /etc/tidewell/tidewell.toml)" = "root:tidewell 640" ] \
    || fail "conffile mode: $(stat -c '%U:%G %a' /etc/tidewell/tidewell.toml)"
dpkg-query -W -f='${Conffiles}\n' tidewell | grep -q '/etc/tidewell/tidewell.toml' || fail "not a conffile"
echo "ok: system user, conffile root:tidewell 0640"
tidewell config check --config /etc/tidewell/tidewell.toml || fail "shipped config"
echo "ok: config check on the shipped config"
systemd-analyze verify /lib/systemd/system/tidewell.service 2> /tmp/verify.err || true
if grep tidewell.service /tmp/verify.err; then fail "systemd-analyze verify"; fi
echo "ok: systemd-analyze verify"
man -l /usr/share/man/man1/tidewell.1.gz > /dev/null 2>&1 || zcat /usr/share/man/man1/tidewell.1.gz | grep -q '^.SH RELOAD' || fail "man page"

# What systemd would do at start: the state directory, owned by the user.
install -d -o tidewell -g tidewell -m 0750 /var/lib/tidewell
setpriv --reuid=tidewell --regid=tidewell --clear-groups tidewell run --config /etc/tidewell/tidewell.toml 2> /tmp/gw.err &
gw=$!
i=0
until grep -q '^tidewell: ready' /tmp/gw.err; do
    i=$((i + 1)); [ $i -lt 300 ] || { cat /tmp/gw.err; fail "gateway not ready"; }
    kill -0 $gw 2>/dev/null || { cat /tmp/gw.err; fail "gateway died"; }
    sleep 0.1
done
mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -i pi1 -t devices/pi1/telemetry -m 'from-the-package'
kill -TERM $gw; wait $gw || fail "gateway exit status"
tidewell log dump --data-dir /var/lib/tidewell | grep -q 'from-the-package' || fail "record not in the log"
echo "ok: the gateway runs as tidewell with the shipped config and logs a publish"

# An upgrade onto a config the gateway would refuse: no restart.
: > /tmp/invoked
echo 'data_dir = 5' >> /etc/tidewell/tidewell.toml
dpkg -i --force-confold /tmp/tidewell.deb > /tmp/dpkg.out 2>&1 || { cat /tmp/dpkg.out; fail "reinstall"; }
grep -q "not (re)started" /tmp/dpkg.out || { cat /tmp/dpkg.out; fail "no word about the broken config"; }
if grep -q "invoke restart\|invoke start" /tmp/invoked; then fail "restarted into a broken config"; fi
echo "ok: a broken config is reported and not restarted into"

dpkg -r tidewell > /tmp/dpkg.out 2>&1 || { cat /tmp/dpkg.out; fail "dpkg -r"; }
grep -qx "deb-systemd-invoke stop tidewell.service" /tmp/invoked || fail "not stopped before removal"
[ ! -e /usr/bin/tidewell ] || fail "binary left after dpkg -r"
[ -d /var/lib/tidewell/ingest ] || fail "dpkg -r deleted the data"
[ -f /etc/tidewell/tidewell.toml ] || fail "dpkg -r deleted the conffile"
echo "ok: dpkg -r stops the unit, keeps the data and the config"

dpkg --purge tidewell > /tmp/dpkg.out 2>&1 || { cat /tmp/dpkg.out; fail "dpkg --purge"; }
[ ! -e /var/lib/tidewell ] || fail "purge left /var/lib/tidewell"
[ ! -e /etc/tidewell ] || fail "purge left /etc/tidewell"
[ ! -e /etc/systemd/system/multi-user.target.wants/tidewell.service ] || fail "purge left the enablement"
echo "ok: dpkg --purge deletes the data and the config"
