#!/bin/sh
# Builds ram's Debian package from a built `ram` binary, with dpkg-deb alone (no debhelper, no
# cargo-deb; see docs/development.md, "Design notes"):
#
#   packaging/deb/build.sh BINARY OUTDIR
#
# writes OUTDIR/ram_<version>_<arch>.deb and prints its path. `cargo xtask deb` runs it on the
# release build; tests/tests/package.rs runs it on the binary under test.
#
# The package: /usr/bin/ram (stripped), /lib/systemd/system/ram.service (packaging/ram.service
# with ExecStart=/usr/bin/ram), /etc/ram/policy.toml (`ram policy default` of this binary; a
# conffile), /usr/share/doc/ram/{copyright,changelog.gz}, and the maintainer scripts of this
# directory. Everything is owned by root:root (--root-owner-group).
#
# Environment:
#   RAM_DEB_VERSION    the package version (default: the binary's own, `ram --version`; a
#                      pre-release `1.2.0-rc.1` becomes `1.2.0~rc.1`, which sorts before 1.2.0)
#   DEBFULLNAME, DEBEMAIL  the Maintainer field, as for dch (default: git's user.name and
#                      user.email in this checkout)
#   SOURCE_DATE_EPOCH  the changelog's date and the archive's timestamps (default: now)
#
# Needs dpkg (dpkg-deb), binutils (strip, objdump: installed with gcc by the build set-up) and
# gzip; nothing from dpkg-dev or debhelper.
set -eu

fail() {
    echo "build.sh: $*" >&2
    exit 1
}

[ $# -eq 2 ] || fail "usage: $0 BINARY OUTDIR"
binary=$1
outdir=$2
[ -f "$binary" ] && [ -x "$binary" ] || fail "$binary is not an executable file"
[ -d "$outdir" ] || fail "$outdir is not a directory"
here=$(cd "$(dirname "$0")" && pwd)
packaging=$(dirname "$here")

version=${RAM_DEB_VERSION:-$("$binary" --version | sed -n 's/^ram \([0-9][^ ]*\)$/\1/p' | sed 's/-/~/')}
[ -n "$version" ] || fail "cannot read the version of $binary (\`$binary --version\`)"
arch=$(dpkg --print-architecture)

maintainer_name=${DEBFULLNAME:-$(git -C "$here" config user.name 2>/dev/null || true)}
maintainer_email=${DEBEMAIL:-$(git -C "$here" config user.email 2>/dev/null || true)}
[ -n "$maintainer_name" ] && [ -n "$maintainer_email" ] ||
    fail "set DEBFULLNAME and DEBEMAIL (the package's Maintainer), or git's user.name and user.email"

umask 022
# The tree is laid out next to the package (not in /tmp, which may be mounted noexec: the staged
# binary runs below).
stage=$(mktemp -d "$outdir/.ram-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
trap 'exit 1' HUP INT TERM
# mktemp makes it 0700; it becomes the package's / and dpkg-deb records its mode.
chmod 0755 "$stage"
install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
    "$stage/etc/ram" "$stage/usr/share/doc/ram"

# The binary, stripped as dh_strip would (symbols and .comment; the build-id note stays).
install -m 0755 "$binary" "$stage/usr/bin/ram"
strip --remove-section=.comment "$stage/usr/bin/ram"

# The unit: packaging/ram.service is written for a hand install to /usr/local/bin (the place
# for software the package manager does not own); the package puts ram in /usr/bin.
unit=$stage/lib/systemd/system/ram.service
{
    echo "# Installed by the ram package (packaging/ram.service with ExecStart=/usr/bin/ram)."
    echo "# Change settings with \`systemctl edit ram\` (a drop-in), not here: an upgrade"
    echo "# replaces this file."
    sed 's|^ExecStart=/usr/local/bin/ram |ExecStart=/usr/bin/ram |' "$packaging/ram.service"
} >"$unit"
chmod 0644 "$unit"
[ "$(grep -c '^ExecStart=/usr/bin/ram daemon ' "$unit")" = 1 ] ||
    fail "packaging/ram.service has no \`ExecStart=/usr/local/bin/ram daemon ...\` line to rewrite"
if grep -v '^#' "$unit" | grep -q /usr/local/bin; then
    fail "packaging/ram.service names /usr/local/bin outside ExecStart; the package has no such path"
fi

# The default policy, as this very binary prints it (the stripped copy: it must run).
"$stage/usr/bin/ram" policy default >"$stage/etc/ram/policy.toml"
chmod 0644 "$stage/etc/ram/policy.toml"
echo /etc/ram/policy.toml >"$stage/DEBIAN/conffiles"

install -m 0644 "$here/copyright" "$stage/usr/share/doc/ram/copyright"
date=$(date -R ${SOURCE_DATE_EPOCH:+-d "@$SOURCE_DATE_EPOCH"})
commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    echo "ram ($version) unstable; urgency=medium"
    echo
    echo "  * Built from the ram sources at commit $commit; the project's history is its git log."
    echo
    echo " -- $maintainer_name <$maintainer_email>  $date"
} | gzip -9n >"$stage/usr/share/doc/ram/changelog.gz"
chmod 0644 "$stage/usr/share/doc/ram/changelog.gz"

for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done

# Depends, from what the binary links: the libraries it needs (NEEDED) and the newest symbol
# version it uses from each. dpkg-shlibdeps (dpkg-dev) would read the same from the libraries'
# symbols files; this needs only binutils, and tests/tests/package.rs compares the two where
# dpkg-shlibdeps is installed. A library this does not know fails the build rather than
# producing a package that misses a dependency.
libc=no
libgcc=no
for lib in $(objdump -p "$binary" | sed -n 's/^ *NEEDED *//p'); do
    case $lib in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | libutil.so.1 | ld-linux*.so.*)
        libc=yes
        ;;
    libgcc_s.so.1) libgcc=yes ;;
    *) fail "$binary needs $lib: add its Debian package to the Depends computation in $0" ;;
    esac
done
depends=""
if [ "$libc" = yes ]; then
    glibc=$(objdump -T "$binary" | grep '\*UND\*' | sed -n 's/.*(GLIBC_\([0-9][0-9.]*\)).*/\1/p' |
        sort -uV | tail -n 1)
    [ -n "$glibc" ] || fail "$binary needs glibc but uses no versioned glibc symbol"
    # glibc's symbol versions are its release numbers: GLIBC_2.34 first came with 2.34.
    depends="libc6 (>= $glibc)"
fi
if [ "$libgcc" = yes ]; then
    # Unversioned: every libgcc-s1 (so named since GCC 10: Debian 11, Ubuntu 20.04) has every
    # symbol version a Rust binary uses (GCC_3.0 .. GCC_4.2.0, for unwinding).
    depends="${depends:+$depends, }libgcc-s1"
fi
# Not a library: the unit's ExecReload= runs /bin/kill, which procps provides.
depends="$depends, procps"

# Installed-Size, as dpkg-gencontrol counts it: KiB per file, rounded up, and one per directory.
installed_size=$(find "$stage" -path "$stage/DEBIAN" -prune -o \( -type f -printf '%s\n' \) -o \
    \( -type d -printf '1024\n' \) | awk '{ k += int(($1 + 1023) / 1024) } END { print k }')

cat >"$stage/DEBIAN/control" <<EOF
Package: ram
Version: $version
Architecture: $arch
Maintainer: $maintainer_name <$maintainer_email>
Installed-Size: $installed_size
Depends: $depends
Section: admin
Priority: optional
Homepage: https://github.com/ram-project/ram
Description: Registry Access Management for Linux, in the kernel
 ram decides, in the Linux kernel, which network destinations the processes
 of chosen cgroups may reach: the container registries a policy trusts, and
 nothing else. eBPF programs on the cgroup v2 connect and sendmsg hooks allow
 only addresses learned from trusted DNS answers for allowed names, and the
 enforcement stays pinned in the kernel when the daemon stops.
 .
 This package installs the ram daemon and CLI, the systemd unit ram.service
 (enabled and started on installation), and the default policy
 /etc/ram/policy.toml, which allows Docker Hub only and enforces it on the
 machine's Docker Engine and containerd. Removing the package removes the
 enforcement (ram uninstall); stopping the service does not. Needs Linux 5.8
 or newer with cgroup v2.
EOF

# md5sums of everything but the conffile (dpkg keeps the conffile's own), for `dpkg --verify`.
(cd "$stage" && find usr lib -type f -exec md5sum {} + | sort -k 2) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

# The file name leaves out an epoch (`1:2.0` -> ram_2.0_amd64.deb), as Debian's archive does.
deb=$outdir/ram_${version#*:}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
