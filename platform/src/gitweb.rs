//! Git smart HTTP for `git push skiff main`, served by the real `git http-backend`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::TryStreamExt;
use skiff_builder::git::{GitRequest, http_backend, init_repo, repo_path};
use skiff_core::AppName;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::api::{ApiError, Caller};
use crate::{Platform, PlatformError};

type Shared = Arc<Platform>;

fn app_of(p: &Platform, caller: &Caller, repo: &str) -> Result<String, ApiError> {
    let name = repo.strip_suffix(".git").unwrap_or(repo);
    let app = AppName::parse(name).map_err(PlatformError::from)?;
    crate::api::authorize(p, caller, app.as_str())?;
    Ok(app.to_string())
}

pub(crate) async fn info_refs(
    state: State<Shared>,
    path: Path<String>,
    caller: Extension<Caller>,
    peer: ConnectInfo<SocketAddr>,
    req: Request,
) -> Result<Response, ApiError> {
    serve(state, path, caller, peer, req, "info/refs").await
}

pub(crate) async fn service(
    state: State<Shared>,
    path: Path<String>,
    caller: Extension<Caller>,
    peer: ConnectInfo<SocketAddr>,
    req: Request,
) -> Result<Response, ApiError> {
    let tail = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    serve(state, path, caller, peer, req, &tail).await
}

async fn serve(
    State(p): State<Shared>,
    Path(repo): Path<String>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    tail: &str,
) -> Result<Response, ApiError> {
    let app = app_of(&p, &caller, &repo)?;
    let root = p.repos_dir();
    let path = repo_path(&root, &app);
    if !path.join("HEAD").exists() {
        init_repo(&path).await.map_err(PlatformError::from)?;
    }
    let headers = req.headers().clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().as_str().to_owned();
    let git_req = GitRequest {
        method,
        path_info: format!("/{app}.git/{tail}"),
        query,
        content_type: header_str(&headers, header::CONTENT_TYPE.as_str()),
        content_encoding: header_str(&headers, header::CONTENT_ENCODING.as_str()),
        git_protocol: header_str(&headers, "git-protocol"),
        remote_user: caller.0.clone(),
        remote_addr: peer.ip().to_string(),
        hook_env: vec![
            ("SKIFF_BIN".into(), p.config.skiff_bin.display().to_string()),
            (
                "SKIFF_HOOK_URL".into(),
                format!("http://{}", p.config.api_addr),
            ),
            ("SKIFF_HOOK_TOKEN".into(), p.hook_token.clone()),
            ("SKIFF_APP".into(), app.clone()),
            ("SKIFF_PUSHER".into(), caller.0.clone()),
        ],
    };
    let body = StreamReader::new(
        req.into_body()
            .into_data_stream()
            .map_err(std::io::Error::other),
    );
    let resp = http_backend(&root, git_req, body)
        .await
        .map_err(PlatformError::from)?;
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in &resp.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Body::from_stream(ReaderStream::new(resp.body)))
        .map_err(|e| PlatformError::Io(std::io::Error::other(e)).into())
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
