#!/bin/sh
# bin-proxy installer: downloads, verifies and installs bin-proxy in place of bin-proxy.sh, or undoes that.
#
#   curl -fsSL <release-url>/install.sh | sh -s -- --release-url <release-url>
#   sh install.sh [--release-url URL] [--pubkey KEY [--trust-pubkey]] [--uninstall]
#
# Everything is in functions and main runs on the last line, so a download that `curl | sh`
# cut short runs nothing at all.

set -eu

PROG=bin-proxy-install
nl='
'
tab=$(printf '\t')

say() { printf '%s\n' "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
usage() {
	cat <<'EOF'
usage: sh install.sh [--release-url URL] [--pubkey KEY [--trust-pubkey]] [--uninstall]

Installs /usr/local/sbin/bin-proxy from a release (URL, or BIN_PROXY_RELEASE_URL) and makes
/usr/local/sbin/bin-proxy.sh run it, keeping the old script as bin-proxy.sh.orig.
--pubkey KEY     verify SHA256SUMS.minisig with minisign and this public key (the key's
                 base64 line, or a file as minisign -G writes it) before trusting SHA256SUMS
--trust-pubkey   also install KEY as /etc/bin-proxy/trusted-keys, so that bin-proxy requires
                 every binary it installs to be signed by it (only when that file is missing)
--uninstall      removes bin-proxy and the cron file this installer wrote, and puts
                 bin-proxy.sh.orig back
DESTDIR, when set, prefixes every path read or written.
EOF
}
usage_error() {
	printf '%s: %s\n' "$PROG" "$*" >&2
	usage >&2
	exit 2
}

exists() { [ -e "$1" ] || [ -L "$1" ]; }

set_paths() {
	root=${DESTDIR:-}
	root=${root%/}
	SBIN=$root/usr/local/sbin
	BIN=$SBIN/bin-proxy
	OLD=$SBIN/bin-proxy.sh
	ORIG=$SBIN/bin-proxy.sh.orig
	ETC=$root/etc/bin-proxy
	CONFIG=$ETC/config
	MANIFEST=$ETC/bin-manifests.json
	LOCKDIR=$root/var/run/bin-proxy
	STATEDIR=$root/var/lib/bin-proxy
	CRON_D=$root/etc/cron.d
	CRON_FILE=$CRON_D/bin-proxy
	TRUSTED_KEYS=$ETC/trusted-keys
	SYSTEM_CRONTAB=$root/etc/crontab
	ROOT_CRONTAB=$root/var/spool/cron/crontabs/root
}

require_root() {
	# A DESTDIR install is a staging tree (or a test), which needs no root.
	if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
		die "must run as root (or with DESTDIR set)"
	fi
}

need() {
	command -v "$1" >/dev/null 2>&1 || die "$1 is required but not installed"
}

# bin-proxy.sh becomes a shell script that execs bin-proxy, not a symlink or a copy: a cron line
# that runs it through sh, bash or `.` keeps working; exec leaves one process, whose executable
# is the file bin-proxy replaces when it updates itself, so the two never drift apart. The path is
# the host's, never DESTDIR's: a staged tree is deployed to /.
write_wrapper() {
	printf '%s\n' '#!/bin/sh' 'exec /usr/local/sbin/bin-proxy "$@"'
}
is_our_wrapper() {
	[ -f "$OLD" ] && [ ! -L "$OLD" ] && write_wrapper | cmp -s - "$OLD"
}

# The cron file, written only where no active cron line runs bin-proxy. Its output is not thrown
# away: cron mails it, and a pass prints nothing unless it fails (README, "What cron mails").
# --uninstall removes the file only while it is byte for byte what this function writes.
write_cron() {
	printf '%s\n' \
		"# bin-proxy: one pass a minute. Written by bin-proxy's install.sh, which never overwrites it;" \
		"# install.sh --uninstall removes this file unless it was changed. cron mails what a pass" \
		"# prints: nothing while all is well, the error lines of a pass that fails." \
		"* * * * * root /usr/local/sbin/bin-proxy.sh"
}
# What the installer of the previous release wrote: it threw a pass's output away. Still ours: a
# re-install replaces it with write_cron's, and --uninstall removes it.
write_previous_cron() {
	printf '%s\n' \
		"# bin-proxy: one pass a minute. Written by bin-proxy's install.sh, which never overwrites it." \
		"* * * * * root /usr/local/sbin/bin-proxy.sh >/dev/null 2>&1"
}
is_previous_cron() {
	[ -f "$CRON_FILE" ] && [ ! -L "$CRON_FILE" ] && write_previous_cron | cmp -s - "$CRON_FILE"
}
is_our_cron() {
	[ -f "$CRON_FILE" ] && [ ! -L "$CRON_FILE" ] && { write_cron | cmp -s - "$CRON_FILE" || is_previous_cron; }
}

# Active cron lines that mention bin-proxy, as "source<TAB>line".
cron_lines() {
	if [ -d "$CRON_D" ]; then
		for f in "$CRON_D"/*; do
			[ -f "$f" ] || continue
			# cron (Debian's run-parts rule) ignores files whose names have other characters,
			# such as bin-proxy.bak: a line there does not run, so it does not count.
			case ${f##*/} in *[!A-Za-z0-9_-]*) continue ;; esac
			mentions_bin_proxy "$f" "$f"
		done
	fi
	if [ -f "$SYSTEM_CRONTAB" ]; then
		mentions_bin_proxy "$SYSTEM_CRONTAB" "$SYSTEM_CRONTAB"
	fi
	if [ -n "$root" ]; then
		if [ -f "$ROOT_CRONTAB" ]; then
			mentions_bin_proxy "$ROOT_CRONTAB" "$ROOT_CRONTAB"
		fi
	elif command -v crontab >/dev/null 2>&1; then
		# "no crontab for root" is an answer, not an error.
		{ crontab -u root -l 2>/dev/null || true; } | mentions_bin_proxy "crontab of root"
	fi
}
# $1 names the source in the output; $2 is the file to read (standard input without it).
mentions_bin_proxy() {
	src=$1
	shift
	awk -v src="$src" '/^[[:space:]]*#/ { next } /bin-proxy/ { print src "\t" $0 }' "$@"
}

detect_asset() {
	os=$(uname -s)
	[ "$os" = Linux ] || die "unsupported system '$os': bin-proxy is built for Linux only"
	machine=$(uname -m)
	case $machine in
	x86_64 | amd64) asset=bin-proxy-linux-x86_64 ;;
	aarch64 | arm64) asset=bin-proxy-linux-aarch64 ;;
	*) die "unsupported architecture '$machine' (uname -m): bin-proxy is built for x86_64 and aarch64 only" ;;
	esac
}

fetch() {
	if command -v curl >/dev/null 2>&1; then
		# --speed-*: a stalled transfer fails instead of hanging the install forever.
		curl -fsSL --retry 2 --connect-timeout 15 --speed-limit 1024 --speed-time 60 \
			-o "$2" "$1" </dev/null
	else
		wget -q -T 60 -O "$2" "$1" </dev/null
	fi
}

# The SHA-256 that SHA256SUMS gives for $asset, in $expected; dies when it gives none, several, or not a hash.
expected_hash() {
	expected=$(awk -v f="$asset" '{ sub(/\r$/, "") } $2 == f || $2 == "*" f { print tolower($1) }' \
		"$tmp/SHA256SUMS" | sort -u)
	case $expected in
	"") die "SHA256SUMS has no line for $asset; nothing was installed" ;;
	*"$nl"*) die "SHA256SUMS has conflicting lines for $asset; nothing was installed" ;;
	esac
	if [ ${#expected} -ne 64 ] || [ -n "$(printf '%s' "$expected" | tr -d '0-9a-f')" ]; then
		die "SHA256SUMS line for $asset does not hold a SHA-256; nothing was installed"
	fi
}

verify_download() {
	actual=$(cd "$tmp" && sha256sum "$asset")
	actual=${actual%% *}
	if [ "$actual" != "$expected" ]; then
		die "checksum mismatch for $asset: SHA256SUMS says $expected, the download is $actual; nothing was installed"
	fi
}

# The base64 key line of --pubkey, in $pubkey: given as is, or read from a file as minisign -G writes it.
read_pubkey() {
	if [ -f "$pubkey_arg" ]; then
		pubkey=$(awk '!/^untrusted comment:/ && NF { sub(/\r$/, ""); print; exit }' "$pubkey_arg")
	else
		pubkey=$pubkey_arg
	fi
	# "Ed", a key id (8 bytes) and the Ed25519 key (32 bytes): 42 bytes, 56 base64 characters.
	case $pubkey in
	RW*) ;;
	*) usage_error "--pubkey: not a minisign public key (its base64 line, RW…, or a file holding it): $pubkey_arg" ;;
	esac
	if [ ${#pubkey} -ne 56 ] || [ -n "$(printf '%s' "$pubkey" | tr -d 'A-Za-z0-9+/')" ]; then
		usage_error "--pubkey: not a minisign public key (its base64 line, RW…, or a file holding it): $pubkey_arg"
	fi
}

# SHA256SUMS is trusted only once minisign has verified SHA256SUMS.minisig with the --pubkey key.
verify_signature() {
	fetch "$release_url/SHA256SUMS.minisig" "$tmp/SHA256SUMS.minisig" ||
		die "cannot download $release_url/SHA256SUMS.minisig, which --pubkey requires; nothing was installed"
	if ! checked=$(minisign -V -P "$pubkey" -m "$tmp/SHA256SUMS" -x "$tmp/SHA256SUMS.minisig" </dev/null 2>&1); then
		die "SHA256SUMS.minisig does not verify with the --pubkey key ($(printf '%s' "$checked" | tr '\n' ' ' | sed 's/ *$//')); nothing was installed"
	fi
	say "SHA256SUMS is signed by the --pubkey key (${checked##*Trusted comment: })"
}

# The SHA-256 of the installed bin-proxy, or nothing when there is none to compare.
installed_hash() {
	if [ -f "$BIN" ] && [ ! -L "$BIN" ] && [ -x "$BIN" ]; then
		sum=$(sha256sum "$BIN") && printf '%s' "${sum%% *}"
	fi
}

run_version() {
	# A hung executable must not hang the install with it.
	if command -v timeout >/dev/null 2>&1; then
		timeout 30 "$1" --version </dev/null 2>&1
	else
		"$1" --version </dev/null 2>&1
	fi
}

# Everything created or staged is recorded, so that any failure before the end can put the host
# back as it was (see rollback).
created_dirs=
created_files=
temps=
bin_backup=
old_backup=
bin_replaced=0
old_replaced=0
in_progress=0
tmp=

# Creates $1 with mode $2 (parents 0755), only when missing: an operator's modes stay as they are.
make_dir() {
	if [ -d "$1" ]; then
		return 0
	fi
	make_dir "$(dirname "$1")" 0755
	mkdir -m "$2" "$1" || die "cannot create $1"
	created_dirs="$1$nl$created_dirs"
}

new_temp() {
	# Dot names: cron ignores them in cron.d, and nobody mistakes them for the real thing.
	mktemp "$1/.$2.XXXXXX" || die "cannot create a temporary file in $1"
}

# A second name for $1 at $2 with the same content, mode and owner. A hard link is instant and
# exact; a symlink is recreated as a symlink.
keep_copy() {
	if [ -L "$1" ]; then
		ln -s "$(readlink "$1")" "$2"
	else
		ln "$1" "$2" 2>/dev/null || cp -p "$1" "$2"
	fi
}

rollback() {
	undone=1
	if [ "$old_replaced" = 1 ] && ! mv -f "$old_backup" "$OLD"; then
		warn "could not put back $OLD: it is saved as $old_backup"
		undone=0
	fi
	if [ "$bin_replaced" = 1 ] && ! mv -f "$bin_backup" "$BIN"; then
		warn "could not put back $BIN: it is saved as $bin_backup"
		undone=0
	fi
	IFS=$nl
	set -f
	for f in $created_files $temps; do
		rm -f "$f" || undone=0
	done
	for d in $created_dirs; do
		if ! rmdir "$d" 2>/dev/null; then
			warn "left $d (not empty)"
			undone=0
		fi
	done
	if [ "$undone" = 1 ]; then
		warn "undone: nothing was changed"
	fi
}

cleanup() {
	rc=$?
	trap - EXIT
	set +e
	if [ "$in_progress" = 1 ]; then
		rollback
	fi
	if [ -n "$tmp" ]; then
		rm -rf "$tmp"
	fi
	exit "$rc"
}

preflight_install() {
	if [ -d "$BIN" ]; then die "$BIN is a directory"; fi
	if [ -d "$OLD" ]; then die "$OLD is a directory"; fi
	if exists "$OLD" && [ ! -f "$OLD" ] && [ ! -L "$OLD" ]; then
		die "$OLD is not a regular file"
	fi
	if exists "$OLD" && ! is_our_wrapper && exists "$ORIG" && ! cmp -s "$OLD" "$ORIG"; then
		die "$OLD and $ORIG both exist and differ: move one of them aside, then run this again"
	fi
	found_cron=$(cron_lines) || die "cannot read the cron configuration"
	# The previous release's own file is the only cron line: it is rewritten (mv over it), not kept.
	if is_previous_cron && [ "$found_cron" = "$CRON_FILE$tab$(write_previous_cron | tail -n 1)" ]; then found_cron=; fi
}

write_config() {
	cat <<'EOF'
# bin-proxy configuration, in shell syntax (KEY=value). Every setting is optional: uncomment
# one to change it from the default shown. The file is 0600 because it may hold the token.
#export BIN_MANAGER_API="http://localhost:8080/api/v1"
# Sent as "Authorization: Bearer ..."; unset by default.
#export BIN_MANAGER_TOKEN="..."
#export BIN_DIR="/usr/local/bin"
#export BIN_MANIFESTS="/etc/bin-proxy/bin-manifests.json"
#export LOG_FILE="/var/log/bin-proxy.log"
EOF
}

write_manifest() {
	cat <<'EOF'
{
  "binaries": [],
  "nodeInfo": { "cpuArch": "", "osRelease": "", "nodeName": "", "binProxyVersion": "" }
}
EOF
}

do_install() {
	[ -n "$release_url" ] || usage_error "no release URL: pass --release-url URL or set BIN_PROXY_RELEASE_URL"
	case $release_url in *://*) ;; *) usage_error "not a URL: $release_url" ;; esac
	release_url=${release_url%/}
	require_root
	detect_asset
	for tool in sha256sum install mktemp cmp awk; do need "$tool"; done
	if ! command -v curl >/dev/null 2>&1 && ! command -v wget >/dev/null 2>&1; then
		die "curl or wget is required but neither is installed"
	fi
	if [ -n "$pubkey_arg" ]; then
		read_pubkey
		command -v minisign >/dev/null 2>&1 ||
			die "--pubkey needs the minisign command to verify SHA256SUMS.minisig, and it is not installed (apt-get install minisign); nothing was installed"
	fi
	preflight_install

	tmp=$(mktemp -d "${TMPDIR:-/tmp}/bin-proxy-install.XXXXXX") || die "cannot create a temporary directory"
	fetch "$release_url/SHA256SUMS" "$tmp/SHA256SUMS" ||
		die "cannot download $release_url/SHA256SUMS; nothing was installed"
	if [ -n "$pubkey" ]; then verify_signature; fi
	expected_hash

	# Stage everything next to where it goes (same filesystem: the final step is a rename), so
	# that failing here leaves only staged files, which rollback removes.
	in_progress=1
	make_dir "$SBIN" 0755
	staged=
	# A re-run (or a fleet-wide one) downloads the executable only when the release differs from
	# what is installed: SHA256SUMS is a few bytes, the executable ~110 MB.
	if [ "$(installed_hash)" = "$expected" ]; then
		say "$BIN is already this release ($asset $expected)"
	else
		fetch "$release_url/$asset" "$tmp/$asset" ||
			die "cannot download $release_url/$asset; nothing was installed"
		verify_download
		say "downloaded $asset, checksum ok"
		staged=$(new_temp "$SBIN" bin-proxy)
		temps="$temps$nl$staged"
		install -m 0755 "$tmp/$asset" "$staged" || die "cannot write $staged"
		# The executable must run on this host, and be bin-proxy (as self-update requires), before it replaces anything.
		if ! version=$(run_version "$staged"); then
			die "the downloaded $asset does not run here (--version said: $version)"
		fi
		case $version in
		"bin-proxy "*) ;;
		*) die "the downloaded $asset is not bin-proxy: its --version said '${version%%"$nl"*}', not 'bin-proxy …'; nothing was installed" ;;
		esac
	fi
	for dir_mode in "$ETC 0755" "$LOCKDIR 0700" "$STATEDIR 0700"; do
		dir=${dir_mode% *}
		if [ ! -d "$dir" ]; then
			make_dir "$dir" "${dir_mode##* }"
			say "created $dir"
		fi
	done
	cfg_tmp=
	if ! exists "$CONFIG"; then
		cfg_tmp=$(new_temp "$ETC" config)
		temps="$temps$nl$cfg_tmp"
		write_config >"$cfg_tmp" || die "cannot write $cfg_tmp"
		chmod 0600 "$cfg_tmp"
	fi
	man_tmp=
	# A config that names another manifest means the default path is not the manifest.
	if ! exists "$MANIFEST" &&
		! { [ -f "$CONFIG" ] && grep -Eq '^[[:space:]]*(export[[:space:]]+)?BIN_MANIFESTS=' "$CONFIG"; }; then
		man_tmp=$(new_temp "$ETC" bin-manifests.json)
		temps="$temps$nl$man_tmp"
		write_manifest >"$man_tmp" || die "cannot write $man_tmp"
		chmod 0644 "$man_tmp"
	fi
	wrapper_tmp=
	if ! is_our_wrapper; then
		wrapper_tmp=$(new_temp "$SBIN" bin-proxy.sh)
		temps="$temps$nl$wrapper_tmp"
		write_wrapper >"$wrapper_tmp" || die "cannot write $wrapper_tmp"
		chmod 0755 "$wrapper_tmp"
	fi
	keys_tmp=
	if [ -n "$trust_pubkey" ]; then
		if ! exists "$TRUSTED_KEYS"; then
			keys_tmp=$(new_temp "$ETC" trusted-keys)
			temps="$temps$nl$keys_tmp"
			printf 'untrusted comment: bin-proxy release key, installed by install.sh --trust-pubkey\n%s\n' "$pubkey" >"$keys_tmp" ||
				die "cannot write $keys_tmp"
			chmod 0644 "$keys_tmp"
		elif grep -qxF "$pubkey" "$TRUSTED_KEYS"; then
			say "kept $TRUSTED_KEYS (it holds this key)"
		else
			warn "$TRUSTED_KEYS exists and does not hold this key: left it as it is (add the key by hand to trust it)"
		fi
	fi
	cron_tmp=
	if [ -z "$found_cron" ]; then
		make_dir "$CRON_D" 0755
		cron_tmp=$(new_temp "$CRON_D" bin-proxy)
		temps="$temps$nl$cron_tmp"
		write_cron >"$cron_tmp" || die "cannot write $cron_tmp"
		chmod 0644 "$cron_tmp"
	fi

	# Commit: only links and renames from here. bin-proxy goes first and the cron line last, so
	# that cron, which may fire at any moment, never calls something that is not there yet.
	if [ -n "$staged" ]; then
		if exists "$BIN"; then
			bin_backup=$(new_temp "$SBIN" bin-proxy.old)
			temps="$temps$nl$bin_backup"
			rm -f "$bin_backup"
			keep_copy "$BIN" "$bin_backup" || die "cannot keep a copy of $BIN"
			mv -f "$staged" "$BIN" || die "cannot rename $staged to $BIN"
			bin_replaced=1
		else
			mv -f "$staged" "$BIN" || die "cannot rename $staged to $BIN"
			created_files="$created_files$nl$BIN"
		fi
		say "installed $BIN (${version%%"$nl"*})"
	fi
	if [ -n "$cfg_tmp" ]; then
		mv -f "$cfg_tmp" "$CONFIG" || die "cannot rename $cfg_tmp to $CONFIG"
		created_files="$created_files$nl$CONFIG"
		say "created $CONFIG (all settings commented out: edit BIN_MANAGER_API)"
	else
		say "kept $CONFIG"
	fi
	if [ -n "$man_tmp" ]; then
		mv -f "$man_tmp" "$MANIFEST" || die "cannot rename $man_tmp to $MANIFEST"
		created_files="$created_files$nl$MANIFEST"
		say "created $MANIFEST (no binaries yet)"
	elif exists "$MANIFEST"; then
		say "kept $MANIFEST"
	fi
	if [ -n "$wrapper_tmp" ]; then
		if exists "$OLD"; then
			old_backup=$(new_temp "$SBIN" bin-proxy.sh.old)
			temps="$temps$nl$old_backup"
			rm -f "$old_backup"
			keep_copy "$OLD" "$old_backup" || die "cannot keep a copy of $OLD"
			if ! exists "$ORIG"; then
				keep_copy "$OLD" "$ORIG" || die "cannot keep the old script as $ORIG"
				created_files="$created_files$nl$ORIG"
				say "kept the old script as $ORIG"
			fi
			mv -f "$wrapper_tmp" "$OLD" || die "cannot rename $wrapper_tmp to $OLD"
			old_replaced=1
		else
			mv -f "$wrapper_tmp" "$OLD" || die "cannot rename $wrapper_tmp to $OLD"
			created_files="$created_files$nl$OLD"
		fi
		say "$OLD now runs bin-proxy (exec /usr/local/sbin/bin-proxy)"
	else
		say "$OLD already runs bin-proxy"
	fi
	if [ -n "$keys_tmp" ]; then
		mv -f "$keys_tmp" "$TRUSTED_KEYS" || die "cannot rename $keys_tmp to $TRUSTED_KEYS"
		created_files="$created_files$nl$TRUSTED_KEYS"
		say "created $TRUSTED_KEYS: bin-proxy now installs only binaries signed by this key"
	fi
	if [ -n "$cron_tmp" ]; then
		mv -f "$cron_tmp" "$CRON_FILE" || die "cannot rename $cron_tmp to $CRON_FILE"
		created_files="$created_files$nl$CRON_FILE"
		say "added the cron line in $CRON_FILE"
	else
		say "kept the existing cron line (${found_cron%%"$tab"*})"
	fi
	in_progress=0
	for f in "$bin_backup" "$old_backup"; do
		if [ -n "$f" ]; then rm -f "$f"; fi
	done
	say "bin-proxy is installed"
}

do_uninstall() {
	require_root
	if [ -d "$OLD" ]; then die "$OLD is a directory"; fi
	# The cron file goes first, so cron never runs a wrapper that is no longer there.
	cron_left="the cron line"
	if is_our_cron; then
		rm -f "$CRON_FILE" || die "cannot remove $CRON_FILE"
		say "removed $CRON_FILE"
		cron_left="any other cron line"
	elif exists "$CRON_FILE"; then
		warn "$CRON_FILE is not the file install.sh wrote (it was changed, or written by someone else): left it as it is"
	fi
	if is_our_wrapper; then
		if exists "$ORIG"; then
			mv -f "$ORIG" "$OLD" || die "cannot rename $ORIG to $OLD"
			say "restored $OLD from $ORIG"
		else
			rm -f "$OLD" || die "cannot remove $OLD"
			say "removed $OLD (there was no $ORIG to restore)"
		fi
	elif exists "$ORIG"; then
		if exists "$OLD"; then
			warn "$OLD is not bin-proxy's wrapper: left it and $ORIG as they are"
		else
			mv -f "$ORIG" "$OLD" || die "cannot rename $ORIG to $OLD"
			say "restored $OLD from $ORIG"
		fi
	fi
	if exists "$BIN"; then
		rm -f "$BIN" || die "cannot remove $BIN"
		say "removed $BIN"
	else
		say "$BIN is not installed"
	fi
	say "left as they are: $ETC (config and manifest), $STATEDIR, $LOCKDIR and $cron_left"
}

main() {
	release_url=${BIN_PROXY_RELEASE_URL:-}
	mode=install
	pubkey_arg=
	pubkey=
	trust_pubkey=
	while [ $# -gt 0 ]; do
		case $1 in
		--release-url)
			[ $# -ge 2 ] || usage_error "--release-url needs a URL"
			release_url=$2
			shift 2
			;;
		--release-url=*)
			release_url=${1#*=}
			shift
			;;
		--pubkey)
			[ $# -ge 2 ] || usage_error "--pubkey needs a KEY"
			pubkey_arg=$2
			shift 2
			;;
		--pubkey=*)
			pubkey_arg=${1#*=}
			shift
			;;
		--trust-pubkey)
			trust_pubkey=1
			shift
			;;
		--uninstall)
			mode=uninstall
			shift
			;;
		-h | --help)
			usage
			exit 0
			;;
		*) usage_error "unknown argument: $1" ;;
		esac
	done
	if [ -n "$trust_pubkey" ] && [ -z "$pubkey_arg" ]; then usage_error "--trust-pubkey needs --pubkey KEY"; fi
	if [ "$mode" = uninstall ] && [ -n "$pubkey_arg" ]; then usage_error "--uninstall takes no --pubkey"; fi
	set_paths
	trap cleanup EXIT
	trap 'exit 129' HUP
	trap 'exit 130' INT
	trap 'exit 143' TERM
	if [ "$mode" = uninstall ]; then
		do_uninstall
	else
		do_install
	fi
}

main "$@"
