//! The HTTP side: the embedded page, the update stream, the graph picture and a JSON snapshot.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::hosts::AllowedHosts;
use crate::hub::{Cursor, Hub, SAMPLE_EVERY};
use crate::resources::Sampler;
use crate::{GraphRenderer, GRAPH_TASK_LIMIT, TICK};

const PAGE: &str = include_str!("../assets/index.html");
const PAGE_POLICY: &str =
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

#[derive(Clone)]
pub(crate) struct App {
    pub(crate) hub: Arc<Hub>,
    pub(crate) hosts: Arc<AllowedHosts>,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) renderer: GraphRenderer,
}

type Params = Query<HashMap<String, String>>;

impl App {
    /// `None` when the request may be answered, else the refusal.
    fn refusal(&self, headers: &HeaderMap, params: &Params) -> Option<Response> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !self.hosts.admits(host) {
            return Some(
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    "this dashboard answers only requests addressed to it (its address, or localhost)",
                )
                    .into_response(),
            );
        }
        let authorized = match &self.token {
            None => true,
            Some(token) => params
                .get("token")
                .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())),
        };
        (!authorized).then(forbidden)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "this dashboard needs the token from the URL belated printed",
    )
        .into_response()
}

pub(crate) fn run(
    listener: std::net::TcpListener,
    app: App,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        // Without a runtime there is no server; the page will simply not answer.
        Err(_) => return,
    };
    runtime.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let hub = Arc::clone(&app.hub);
        let router = Router::new()
            .route("/", get(page))
            .route("/api/events", get(events))
            .route("/api/state", get(snapshot))
            .route("/api/graph.svg", get(graph))
            .with_state(app);
        let sampling = async move {
            let mut sampler = Sampler::new();
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            loop {
                every.tick().await;
                if let Some(reading) = sampler.sample() {
                    hub.record_sample(reading);
                }
            }
        };
        // Streams never end by themselves, so stopping drops the server rather than draining it.
        tokio::select! {
            _ = axum::serve(listener, router) => {}
            _ = sampling => {}
            _ = stopped => {}
        }
    });
}

async fn page(State(app): State<App>, headers: HeaderMap, params: Params) -> Response {
    if let Some(refusal) = app.refusal(&headers, &params) {
        return refusal;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
        ],
        PAGE,
    )
        .into_response()
}

async fn events(State(app): State<App>, headers: HeaderMap, params: Params) -> Response {
    if let Some(refusal) = app.refusal(&headers, &params) {
        return refusal;
    }
    let updates = futures_util::stream::unfold(
        (app.hub, Cursor::default(), true),
        |(hub, cursor, first)| async move {
            if !first {
                tokio::time::sleep(TICK).await;
            }
            let (update, cursor) = hub.update(cursor);
            Some((
                Ok::<_, Infallible>(Event::default().data(update.to_string())),
                (hub, cursor, false),
            ))
        },
    );
    Sse::new(updates)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn snapshot(State(app): State<App>, headers: HeaderMap, params: Params) -> Response {
    if let Some(refusal) = app.refusal(&headers, &params) {
        return refusal;
    }
    let (update, _) = app.hub.update(Cursor::default());
    (
        [(header::CONTENT_TYPE, "application/json")],
        update.to_string(),
    )
        .into_response()
}

async fn graph(State(app): State<App>, headers: HeaderMap, params: Params) -> Response {
    if let Some(refusal) = app.refusal(&headers, &params) {
        return refusal;
    }
    let Some(drawable) = app.hub.graph() else {
        let message = format!(
            "no graph to draw: nothing computed yet, or more than {GRAPH_TASK_LIMIT} tasks (see progress per function)"
        );
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    match (app.renderer)(&drawable.labels, &drawable.edges) {
        Ok(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(message) => (StatusCode::INTERNAL_SERVER_ERROR, message).into_response(),
    }
}
