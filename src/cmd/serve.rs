//! `pvrfs serve`: check the arguments, build the server (`crate::serve`), listen, run until
//! Ctrl-C or SIGTERM.

use super::Ctx;
use crate::cli::ServeArgs;
use crate::error::Error;
use crate::serve::{tokens::Tokens, Config, Limits, Server};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub fn serve(args: ServeArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    // One line per request: info level for pvrfs unless RUST_LOG says otherwise.
    let _ =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("pvrfs=info"))
            .try_init();
    let addr: SocketAddr = args
        .listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Usage(format!("--listen '{}' is not an ADDR:PORT", args.listen)))?;
    let tokens = match &args.tokens {
        Some(path) => Some(Tokens::load(&ctx.cwd.join(path))?),
        None => None,
    };
    if tokens.is_none() && !addr.ip().is_loopback() {
        return Err(Error::Usage(format!(
            "refusing to serve on {addr} without --tokens: anybody who reaches it could read and write every repository; listen on a loopback address (the default 127.0.0.1:8470) or give --tokens FILE"
        ))
        .into());
    }
    let limits = Limits {
        max_json: args.max_json_size,
        max_object: args.max_object_size,
        idle: Duration::from_secs(args.idle_timeout.max(1)),
        min_rate: args.min_rate,
        url_lifetime: Duration::from_secs(args.url_lifetime.max(1)),
        max_connections: args.max_connections.max(1),
        ..Limits::default()
    };
    let backend = Config::backend_for(args.store.as_deref(), &limits)?;
    let store = match &args.store {
        Some(s) => format!("objects in {s}"),
        None => "objects in each repository's store".to_string(),
    };
    let root = ctx.cwd.join(&args.root);
    let server = Server::new(Config {
        root,
        tokens,
        backend,
        public_url: args.public_url.clone(),
        limits,
    })?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::Other(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("cannot read the listening address: {e}")))?;
    let access = match &args.tokens {
        Some(p) => format!("access by the tokens in {}", p.display()),
        None => "no tokens: read-write for anybody on this machine".to_string(),
    };
    let names = server.repository_names();
    writeln!(
        ctx.err,
        "pvrfs serve: {} under {} at http://{local}/ ({access}; {store}); Ctrl-C stops",
        match names.len() {
            1 => "1 repository".to_string(),
            n => format!("{n} repositories"),
        },
        server.root().display(),
    )?;
    ctx.err.flush()?;
    crate::serve::run(Arc::new(server), listener, crate::serve::signals())?;
    Ok(())
}
