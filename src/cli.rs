//! The command line: clap definitions and dispatch. Thin by design: every command is a library
//! function in `cmd::*` taking its parsed arguments and a `Ctx` (where to write, where it runs),
//! so tests drive commands without spawning a process.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// pvr-compatible repositories with numbered revisions, mountable over FUSE.
///
/// A pvr repository is a directory tree stored as one canonical JSON state file (`.pvr/json`:
/// paths → sha256 object ids, `*.json` files inlined) plus a flat content-addressed object
/// store. pvrfs reads and writes the same files as Pantacor's `pvr`, keeps numbered revisions,
/// and mounts any revision as a filesystem.
#[derive(Debug, Parser)]
#[command(
    name = "pvrfs",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Print less: no progress bars, no per-file lines on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository in the current directory.
    ///
    /// Writes `.pvr/json` (`{ "#spec": SPEC }`, as pvr does), `.pvr/config` and an in-repo
    /// object store `.pvr/objects` (pvr's default is a global pool; pass `--objects` for one).
    /// Refuses to touch an existing repository.
    Init(InitArgs),
    /// Stage files, symlinks and empty directories for the next commit (all untracked ones
    /// when no path is given).
    ///
    /// A directory adds the untracked files, symlinks and empty directories under it (changes to
    /// tracked ones — content, link targets, modes — are committed without staging). A file
    /// named explicitly, or matched by a glob such as '*.json', is staged even when tracked (so
    /// `add --raw x.json` switches a tracked file to an object). A symlink is stored as a
    /// symlink, never followed. Sockets, FIFOs and devices cannot be stored: named, they are
    /// refused; under a directory, each is listed with a warning. `.pvrignore` (gitignore
    /// syntax) is honoured. Objects are stored right away, so a later commit only records them.
    Add(AddArgs),
    /// Show what changed in the work tree since the last commit.
    ///
    /// One line per path, as pvr prints them: `A` added (staged), `D` deleted, `C` changed
    /// (content, symlink target, type or mode), `?` untracked; sorted within each group.
    /// Directories (empty ones, or a changed directory mode) end in `/`. What a state cannot
    /// hold (sockets, FIFOs, devices) is listed on stderr as a warning.
    Status(StatusArgs),
    /// Show the changes as a JSON patch.
    ///
    /// Without revisions: committed state → work tree, as pvr's RFC 7396 merge patch (`{}` when
    /// clean). `diff A` compares revision A with the work tree, `diff A B` two revisions.
    /// Inside a mount (or with --mount) the mount's view takes the work tree's place.
    Diff(DiffArgs),
    /// Print a state (the work tree's staged view by default, or a revision; inside a mount,
    /// the mount's view).
    Json(JsonArgs),
    /// Record the work tree's tracked changes as a new revision.
    #[command(visible_alias = "ci")]
    Commit(CommitArgs),
    /// List revisions, newest first.
    Log(LogArgs),
    /// Show one revision: its record and its diff from its parent.
    Show(ShowArgs),
    /// Make the work tree equal to a revision (latest by default).
    ///
    /// Writes every file of the revision (verifying object hashes) with its recorded mode,
    /// creates its symlinks and empty directories, removes tracked ones the revision does not
    /// have, and refuses to overwrite uncommitted changes without `--force`. Nothing is ever
    /// written or deleted through a symlink found in the work tree.
    /// The head (`.pvr/json`) does not move: after `checkout 3`, `status` shows how the tree
    /// differs from the latest revision, and `commit` records revision 3's content anew.
    #[command(visible_alias = "co")]
    Checkout(CheckoutArgs),
    /// Discard uncommitted changes: `checkout --force` of the latest revision.
    Reset(ResetArgs),
    /// Apply a patch (RFC 7396 merge patch or RFC 6902 JSON Patch) as a new revision.
    ///
    /// All or nothing: if the patch does not apply, or needs an object the store lacks,
    /// nothing is written. The work tree is left alone; `pvrfs checkout` brings it up to date.
    Apply(ApplyArgs),
    /// Check every revision: states valid, every object present and hashing to its name.
    Fsck(FsckArgs),
    /// Delete objects no revision references (in-repo stores only; never a shared pool).
    Gc(GcArgs),
    /// Fetch a state and its objects from SRC and make it the local state.
    ///
    /// SRC is a repository (its work directory or REPO/.pvr), a plain directory (`json` +
    /// `objects/`), a tarball, an http(s) URL (a pvr remote such as `pvrfs serve`, detected by
    /// its `.pvrremote`, or a server of the plain layout), or s3://BUCKET/PREFIX (endpoint and
    /// credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    /// `SRC#part1,-part2` selects keys equal to or under `part1`, removes `part2`.
    Get(ExchangeArgs),
    /// Like `get`, but merge the fetched keys into the local state instead of replacing it.
    Merge(ExchangeArgs),
    /// Create a repository from SRC and check it out (init + get + checkout).
    Clone(CloneArgs),
    /// Publish the latest revision to DEST.
    ///
    /// DEST is a pvr remote URL (the state is posted as its next revision; a conflict when
    /// somebody else posted first), a repository (a new revision of it), a directory (created
    /// if missing), an http(s) URL accepting PUT, or s3://BUCKET/PREFIX. Objects go first,
    /// the state last; only objects the destination lacks move.
    ///
    /// To S3, objects of 256 MiB and more go as multipart uploads in 64 MiB parts
    /// (PVRFS_S3_MULTIPART_THRESHOLD and PVRFS_S3_PART_SIZE change that; parts are at least
    /// 5M), each part checked by the service, the whole object's sha256 checked before it
    /// becomes visible; an upload that fails or is interrupted is aborted.
    #[command(visible_alias = "put")]
    Push(PushArgs),
    /// Write the latest revision (json + objects) as a tarball (gzip for .gz/.tgz), or `-`.
    Export(ExportArgs),
    /// Make a tarball's state the local state (objects are verified and stored).
    Import(ImportArgs),
    /// Mount a revision at MNT (read-only, or copy-on-write with --rw).
    Mount(MountArgs),
    /// Unmount a pvrfs mount.
    Umount(UmountArgs),
    /// List active pvrfs mounts.
    Mounts,
    /// Serve every repository under ROOT with pvr's remote protocol.
    ///
    /// Repository ROOT/NAME is at http://ADDR:PORT/NAME (NAME@REV: a past revision, read-only):
    /// `pvr clone/get/merge/post/putobjects` and `pvrfs get/merge/clone/push` work against it.
    /// Objects stay in each repository's store, or with --store in an S3 bucket that clients
    /// reach directly through presigned URLs. Without --tokens the server allows everything and
    /// so listens on loopback only. One log line per request; Ctrl-C stops.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The state's `#spec` (default pantavisor-service-system@1).
    pub spec: Option<String>,
    /// Same as the positional SPEC (pvr's spelling).
    #[arg(long = "spec", conflicts_with = "spec", value_name = "SPEC")]
    pub spec_flag: Option<String>,
    /// Object store directory to record as `ObjectsDir` (absolute, or relative to the repo).
    #[arg(long, value_name = "DIR")]
    pub objects: Option<String>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Store `.json` files as objects instead of inlining them.
    #[arg(long)]
    pub raw: bool,
    /// Files, directories or glob patterns (default: everything).
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show the changes of this --rw mount (default: the mount containing the cwd, if any).
    #[arg(long, value_name = "MNT")]
    pub mount: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum DiffFormat {
    /// RFC 7396 JSON merge patch, rendered as pvr does (default).
    #[default]
    #[value(name = "merge", alias = "rfc7396")]
    Merge,
    /// RFC 6902 JSON Patch: exact (can express null values and array edits).
    #[value(name = "rfc6902", alias = "json-patch")]
    Rfc6902,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: DiffFormat,
    /// Up to two revisions (N, latest, HEAD, latest~K, state-id prefix).
    #[arg(num_args = 0..=2, value_name = "REV")]
    pub revs: Vec<String>,
    /// Show the changes of this --rw mount (default: the mount containing the cwd, if any).
    #[arg(long, value_name = "MNT")]
    pub mount: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print canonical JSON (what `.pvr/json` holds) instead of indented JSON.
    #[arg(long)]
    pub canonical: bool,
    /// A revision to print instead of the staged work-tree view.
    pub rev: Option<String>,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The commit message (default `** No commit message **`, as pvr).
    #[arg(short, long)]
    pub message: Option<String>,
    /// Commit the changes of this --rw mount (default: the mount containing the cwd, if any).
    #[arg(long, value_name = "MNT")]
    pub mount: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Show at most N revisions.
    #[arg(short = 'n', long)]
    pub max_count: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The revision (default latest).
    pub rev: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: DiffFormat,
}

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// The revision (default latest).
    pub rev: Option<String>,
    /// Write inline JSON canonically instead of pvr's indented rendering.
    #[arg(long)]
    pub canonical: bool,
    /// Hard-link files from the object store instead of copying (do not edit them in place!).
    #[arg(long)]
    pub hardlink: bool,
    /// Overwrite uncommitted changes.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Write inline JSON canonically.
    #[arg(long)]
    pub canonical: bool,
    /// Discard every change of this --rw mount (its overlay); required for a mount, so a reset
    /// typed inside a mount cannot discard its changes by accident.
    #[arg(long, value_name = "MNT")]
    pub mount: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The patch file (`-` for stdin).
    pub patch: PathBuf,
    /// Commit message for the new revision.
    #[arg(short, long)]
    pub message: Option<String>,
}

#[derive(Debug, Args)]
pub struct FsckArgs {}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only say what would be removed.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ExchangeArgs {
    /// Source: repository, directory, tarball, http(s):// or s3:// URL, optionally `#part,-part`.
    pub src: String,
    /// Bearer token for a pvr remote (default: $PVRFS_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    pub src: String,
    /// Target directory (default: the source's last path component).
    // Own id: "dir" is taken by the global `-C DIR`, and clap would merge the two.
    #[arg(id = "target", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Bearer token for a pvr remote (default: $PVRFS_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// Limits on what an HTTP server or pvr remote may send (a server is untrusted:
/// docs/EXCHANGE.md).
#[derive(Debug, Args, Clone)]
pub struct TransferArgs {
    /// Largest object accepted from a server (bytes; K, M, G, T suffixes; default 4G): a bigger
    /// one fails the transfer at its first byte past the limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_object_size: Option<u64>,
    /// Slowest acceptable transfer (bytes per second; K, M, G suffixes; default 32K or
    /// $PVRFS_MIN_RATE): a transfer of N bytes must finish within the grace time plus N / RATE.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub min_throughput: Option<u64>,
    /// Seconds every transfer gets whatever its size (default 30), and the longest wait for a
    /// byte of an HTTP body.
    #[arg(long, value_name = "SECONDS")]
    pub transfer_grace: Option<u64>,
}

/// `123`, `4K`, `16M`, `4G`, `1T` (powers of 1024; a trailing `B`/`iB` is accepted).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "unknown size suffix in '{text}' (use K, M, G or T)"
                    ))
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 4096, 64K, 4G)"))?;
    n.checked_mul(1u64 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("'{text}' is out of range"))
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Destination: pvr remote URL, repository, directory, http(s):// or s3:// URL.
    pub dest: String,
    /// Bearer token for a pvr remote (default: $PVRFS_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Message of the revision made at a pvr remote or repository (default: the latest
    /// revision's message).
    #[arg(short, long)]
    pub message: Option<String>,
    /// Replace the state of a pvr remote or S3 prefix even when it has changes this repository
    /// never got (by default that is a conflict: merge first).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The directory whose repositories are served (searched recursively).
    pub root: PathBuf,
    /// Address to listen on; port 0 picks a free port (the URL is printed at start).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8470")]
    pub listen: String,
    /// Bearer tokens: one `TOKEN read|write REPO-GLOB...` per line (docs/EXCHANGE.md).
    /// Required to listen on anything but loopback.
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// Keep objects in an S3-compatible bucket (credentials from the AWS_* variables). Clients
    /// upload through presigned single-PUT URLs, so objects over 5 GiB are refused (413):
    /// push those to the bucket with `pvrfs push s3://…`, which uploads in parts.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub store: Option<String>,
    /// Base of the URLs handed to clients (default: http:// + the request's Host header).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Close a connection that sends or reads nothing for this long.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub idle_timeout: u64,
    /// Cut off transfers slower than this on average (after 30 s).
    #[arg(long, value_name = "BYTES_PER_SEC", default_value_t = 32 * 1024)]
    pub min_rate: u64,
    /// Largest object accepted for upload.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 30)]
    pub max_object_size: u64,
    /// Largest JSON request body (a posted state).
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub max_json_size: u64,
    /// How long signed object URLs stay valid.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub url_lifetime: u64,
    /// Simultaneous connections; more are refused with 503.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only keys equal to or under these prefixes (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub parts: Vec<String>,
    /// Output file (`.tar`, `.tar.gz`/`.tgz`) or `-` for stdout.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    pub file: PathBuf,
    /// Largest object accepted from the tarball (bytes; K, M, G, T suffixes; default 4G): a
    /// member announcing more is refused before anything is read or written.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_object_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum PassthroughMode {
    /// Read-only mounts: open files without asking the daemon and fill the page cache from it,
    /// fast for many small files and for blobs (passthrough only on kernels that cannot open
    /// without asking); --rw mounts: passthrough for files opened for writing.
    #[default]
    Auto,
    /// Hand every opened blob to the kernel (FUSE passthrough; one daemon round trip per
    /// open); fail to open where passthrough is refused.
    Always,
    /// Never use passthrough: all file data comes through the daemon.
    Never,
}

impl From<PassthroughMode> for crate::fuse::Passthrough {
    fn from(m: PassthroughMode) -> Self {
        match m {
            PassthroughMode::Auto => crate::fuse::Passthrough::Auto,
            PassthroughMode::Always => crate::fuse::Passthrough::Always,
            PassthroughMode::Never => crate::fuse::Passthrough::Never,
        }
    }
}

/// The copy-on-write backend of a `--rw` mount (`--cow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CowBackend {
    /// Kernel overlayfs when this process may mount it, else the FUSE overlay.
    #[default]
    Auto,
    /// Kernel overlayfs over a private EROFS image (or read-only FUSE mount) of the base revision.
    Kernel,
    /// The FUSE overlay (journal + upper files), for callers without CAP_SYS_ADMIN.
    Fuse,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The repository's work directory.
    pub repo: PathBuf,
    /// Revision to mount (N, latest, HEAD, latest~K, state-id prefix).
    pub rev: String,
    /// Where to mount (an existing empty directory).
    pub mountpoint: PathBuf,
    /// Copy-on-write: changes go to an overlay under .pvr/, commit with `pvrfs commit`.
    #[arg(long)]
    pub rw: bool,
    /// Which overlay a --rw mount uses (one per repository and name; default "default").
    #[arg(long, value_name = "NAME", default_value = "default", requires = "rw")]
    pub overlay: String,
    /// Copy-on-write backend of a --rw mount: `kernel` (overlayfs over a private EROFS image of
    /// the base with the object store as data layer, or over a private read-only FUSE mount of
    /// it where EROFS cannot be used; needs CAP_SYS_ADMIN), `fuse` (the FUSE overlay; any user
    /// who may mount FUSE), `auto`: kernel when it can be mounted, else fuse. An existing
    /// overlay keeps the backend it was made with.
    #[arg(long, value_enum, default_value_t, requires = "rw")]
    pub cow: CowBackend,
    /// Stay in the foreground (logs to stderr; RUST_LOG=debug for more).
    #[arg(short, long)]
    pub foreground: bool,
    /// Let other users (and containers) access the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Render inline JSON canonically (as `checkout --canonical`).
    #[arg(long)]
    pub canonical: bool,
    /// Owner uid of every file (default: yours).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Owner gid of every file (default: yours).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Check each object's hash once before serving it (EIO when it does not match).
    #[arg(long)]
    pub verify: bool,
    /// How file data reaches readers: the page cache filled by the daemon, or kernel
    /// passthrough to the object files.
    #[arg(long, value_enum, default_value_t)]
    pub passthrough: PassthroughMode,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
}
