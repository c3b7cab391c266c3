//! The proxy-wasm glue (wasm32 only): reads the plugin configuration,
//! headers, body and Envoy properties, feeds them to [`RequestFlow`], and
//! carries out the [`Action`]s it returns. No decisions are made here.
//!
//! Host calls go through `proxy_wasm::hostcalls`, whose functions return a
//! `Result`, rather than the trait helpers that `unwrap()` it; every error
//! is logged and fails the request closed.

use crate::check::{Connection, grpc_upstream};
use crate::completion::{self, PendingList, StreamOwner};
use crate::config::{Config, ConfigError};
use crate::decision::{HeaderEdit, LocalReply};
use crate::flow::{Action, RequestFlow, ResponseBodyAction, ResponseHeadersAction, SharedConfig};
use crate::jsonrpc;
use crate::stale::{self, RejectedCredentials, RejectedStore, SharedRejected};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{self, BufferType, ContextType, LogLevel, MapType, Status};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// How often the root context asks the service about pending URL
/// elicitations (only while there are some).
const COMPLETION_POLL: Duration = Duration::from_secs(1);
/// Attempts at a compare-and-swap update of the shared pending list.
const CAS_ATTEMPTS: usize = 8;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(Root {
            config: Rc::new(Err(ConfigError("plugin not configured yet".into()))),
            rejected: Rc::new(SharedDataRejected),
            completion_call: None,
        })
    });
}}

fn log(level: LogLevel, message: &str) {
    // Nothing sensible to do if logging itself fails.
    let _ = hostcalls::log(level, message);
}

/// The plugin: holds the configuration shared by all requests of this VM.
struct Root {
    config: SharedConfig,
    /// Credentials the upstream refused, shared by every worker's requests.
    rejected: SharedRejected,
    /// Token of the `Completed` question in flight.
    completion_call: Option<u32>,
}

fn now_unix() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Reads shared value `key`, lets `change` edit it and, when it says it
/// changed something, writes it back unless another VM wrote first (then
/// tries again on the fresh copy). `None` when the host refused.
fn update_shared<T, R>(
    key: &str,
    decode: impl Fn(Option<&[u8]>) -> T,
    encode: impl Fn(&T) -> Vec<u8>,
    mut change: impl FnMut(&mut T) -> (bool, R),
) -> Option<R> {
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = match hostcalls::get_shared_data(key) {
            Ok(found) => found,
            Err(status) => {
                log(LogLevel::Warn, &format!("cannot read {key}: {status:?}"));
                return None;
            }
        };
        let mut value = decode(bytes.as_deref());
        let (changed, result) = change(&mut value);
        if !changed {
            return Some(result);
        }
        match hostcalls::set_shared_data(key, Some(&encode(&value)), cas) {
            Ok(()) => return Some(result),
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                log(LogLevel::Warn, &format!("cannot update {key}: {status:?}"));
                return None;
            }
        }
    }
    None
}

/// Creates shared value `key` if missing, before any request can change
/// it, so that every later write is a compare-and-swap (a first write to a
/// missing key cannot be, and two VMs could lose an entry there).
fn create_shared(key: &str, empty: &[u8]) {
    if let Ok((None, _)) = hostcalls::get_shared_data(key)
        && let Err(status) = hostcalls::set_shared_data(key, Some(empty), None)
    {
        log(LogLevel::Warn, &format!("cannot create {key}: {status:?}"));
    }
}

/// The shared list of pending URL elicitations, edited by `change`.
fn with_pending<R>(change: impl FnMut(&mut PendingList) -> (bool, R)) -> Option<R> {
    update_shared(
        completion::SHARED_KEY,
        PendingList::decode,
        PendingList::encode,
        change,
    )
}

/// The credentials an upstream refused, in shared data: one refusal seen by
/// any worker makes every worker's next `Check` ask for a refresh.
#[derive(Debug)]
struct SharedDataRejected;

impl RejectedStore for SharedDataRejected {
    fn update(&self, change: &mut dyn FnMut(&mut RejectedCredentials) -> bool) {
        update_shared(
            stale::SHARED_KEY,
            |bytes| RejectedCredentials::decode(bytes.unwrap_or_default()),
            RejectedCredentials::encode,
            |r| (change(r), ()),
        );
    }

    fn header_value(&self) -> Option<String> {
        match hostcalls::get_shared_data(stale::SHARED_KEY) {
            Ok((Some(bytes), _)) if !bytes.is_empty() => {
                RejectedCredentials::decode(&bytes).header_value()
            }
            _ => None,
        }
    }
}

/// The completed elicitations for this GET stream, taken so that no other
/// stream announces them again.
fn take_completed(owner: &StreamOwner) -> Vec<String> {
    // Most chunks: nothing completed for this session; no parse.
    match hostcalls::get_shared_data(completion::SHARED_KEY) {
        Ok((Some(bytes), _)) if PendingList::completed_in_session(&bytes, &owner.session) => {}
        _ => return Vec::new(),
    }
    with_pending(|list| {
        if list.has_completed_for(owner) {
            (true, list.take_completed_for(owner))
        } else {
            (false, Vec::new())
        }
    })
    .unwrap_or_default()
}

impl Root {
    /// Asks the service which pending elicitations are completed, if any
    /// are pending and no question is in flight.
    fn ask_about_pending(&mut self) {
        if self.completion_call.is_some() {
            return;
        }
        let Ok(config) = self.config.as_ref() else {
            return;
        };
        let now = now_unix();
        let question = with_pending(|list| {
            let pruned = list.prune(now);
            let ask = list.to_ask(now);
            let question = (!ask.is_empty()).then(|| completion::completed_request(&ask));
            (pruned, question)
        })
        .flatten();
        let (Some(question), Some(upstream)) = (question, grpc_upstream(config)) else {
            return;
        };
        match hostcalls::dispatch_grpc_call(
            &upstream,
            completion::SERVICE,
            completion::METHOD,
            Vec::new(),
            Some(&question),
            completion::timeout(config),
        ) {
            Ok(token) => self.completion_call = Some(token),
            Err(status) => log(
                LogLevel::Warn,
                &format!("could not ask about pending URL elicitations: {status:?}"),
            ),
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.completion_call != Some(token_id) {
            return;
        }
        self.completion_call = None;
        if status_code != 0 {
            // Asked again at the next tick; nothing waits on the answer.
            log(
                LogLevel::Debug,
                &format!(
                    "asking about pending URL elicitations failed with gRPC status {status_code}"
                ),
            );
            return;
        }
        let ids = match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size) {
            Ok(bytes) => completion::completed_ids(bytes.as_deref().unwrap_or_default()),
            Err(_) => None,
        };
        if let Some(ids) = ids.filter(|ids| !ids.is_empty()) {
            with_pending(|list| (list.mark_completed(&ids), ()));
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let raw = hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        );
        let parsed = match raw {
            Ok(bytes) => Config::parse(bytes.as_deref()),
            Err(status) => Err(ConfigError(format!(
                "could not read the plugin configuration: {status:?}"
            ))),
        };
        match &parsed {
            Ok(c) => log(
                LogLevel::Info,
                &format!(
                    "configured (authz cluster {:?}, authority {:?}, timeout {} ms, max body {} bytes)",
                    c.authz_cluster, c.authz_authority, c.authz_timeout_ms, c.max_body_bytes
                ),
            ),
            Err(e) => log(
                LogLevel::Error,
                &format!("{e}; every request will be answered 503 until it is fixed"),
            ),
        }
        self.config = Rc::new(parsed);
        create_shared(completion::SHARED_KEY, &PendingList::default().encode());
        create_shared(stale::SHARED_KEY, &RejectedCredentials::default().encode());
        if let Err(status) = hostcalls::set_tick_period(COMPLETION_POLL) {
            log(
                LogLevel::Warn,
                &format!("no tick for URL elicitation completions: {status:?}"),
            );
        }
        // Accept the plugin even when invalid: it then fails closed per
        // request instead of being dropped from the filter chain.
        true
    }

    fn on_tick(&mut self) {
        self.ask_about_pending();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            flow: RequestFlow::new(Rc::clone(&self.config)).remembering(Rc::clone(&self.rejected)),
            token: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request.
struct Filter {
    flow: RequestFlow,
    /// Token of the `Check` call in flight.
    token: Option<u32>,
}

fn property(path: &[&str]) -> Option<String> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok().filter(|s| !s.is_empty()),
        _ => None,
    }
}

fn read_request_body(size: usize) -> Option<Vec<u8>> {
    match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
        Ok(body) => body,
        Err(status) => {
            log(
                LogLevel::Error,
                &format!("cannot read the request body: {status:?}"),
            );
            None
        }
    }
}

fn apply(edit: &HeaderEdit) -> Result<(), Status> {
    let map = MapType::HttpRequestHeaders;
    match edit {
        HeaderEdit::Remove(name) => hostcalls::remove_map_value(map, name),
        HeaderEdit::Set(name, value) => hostcalls::set_map_value(map, name, Some(value)),
        HeaderEdit::Add(name, value) => hostcalls::add_map_value(map, name, value),
    }
}

/// Where an action is carried out: inside a filter callback (answer with a
/// `types::Action`) or in the gRPC callback (resume the held request).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Filter,
    Callback,
}

impl Filter {
    fn run(&mut self, action: Action, phase: Phase) -> types::Action {
        match action {
            Action::Wait => types::Action::Pause,
            Action::Check(call) if call.upstream_body.is_some() && !self.replace_body(&call) => {
                let id = self.flow.message().and_then(|m| m.id.clone());
                self.send(LocalReply::error(
                    500,
                    id.as_ref(),
                    jsonrpc::INTERNAL_ERROR,
                    "the gateway could not prepare the request for the upstream",
                ))
            }
            Action::Check(call) => match hostcalls::dispatch_grpc_call(
                &call.upstream,
                call.service,
                call.method,
                Vec::new(),
                Some(&call.message),
                call.timeout,
            ) {
                Ok(token) => {
                    self.token = Some(token);
                    types::Action::Pause
                }
                Err(status) => {
                    log(
                        LogLevel::Error,
                        &format!("could not start the Check call: {status:?}"),
                    );
                    let next = self
                        .flow
                        .on_dispatch_failed("the call could not be started");
                    self.run(next, phase)
                }
            },
            Action::Continue(edits) => {
                for edit in &edits {
                    if let Err(status) = apply(edit) {
                        log(
                            LogLevel::Error,
                            // The name only: the value may be the credential.
                            &format!(
                                "could not apply the authorization decision to header {}: {status:?}",
                                edit.name()
                            ),
                        );
                        let id = self.flow.message().and_then(|m| m.id.clone());
                        return self.send(LocalReply::error(
                            500,
                            id.as_ref(),
                            jsonrpc::INTERNAL_ERROR,
                            "the gateway could not apply the authorization decision",
                        ));
                    }
                }
                if phase == Phase::Callback
                    && let Err(status) = hostcalls::resume_http_request()
                {
                    log(
                        LogLevel::Error,
                        &format!("could not resume the request: {status:?}"),
                    );
                }
                types::Action::Continue
            }
            Action::Respond(reply) => self.send(reply),
        }
    }

    /// Puts `call.upstream_body` in place of the held body (only possible
    /// while the body callback runs, which is where a Check starts).
    fn replace_body(&self, call: &crate::check::CheckCall) -> bool {
        let Some(body) = &call.upstream_body else {
            return true;
        };
        let replaced =
            hostcalls::set_buffer(BufferType::HttpRequestBody, 0, self.flow.buffered(), body)
                .and_then(|()| {
                    hostcalls::remove_map_value(MapType::HttpRequestHeaders, "content-length")
                });
        if let Err(status) = replaced {
            log(
                LogLevel::Error,
                &format!("could not replace the request body: {status:?}"),
            );
        }
        replaced.is_ok()
    }

    fn send(&self, reply: LocalReply) -> types::Action {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Err(status) = hostcalls::send_http_response(
            u32::from(reply.status),
            headers,
            Some(reply.body.as_bytes()),
        ) {
            log(
                LogLevel::Error,
                &format!("could not send the local reply: {status:?}"),
            );
            let _ = hostcalls::reset_http_request();
        }
        types::Action::Pause
    }
}

impl Context for Filter {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.token != Some(token_id) {
            return;
        }
        self.token = None;
        let body = if status_code == 0 {
            match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size) {
                Ok(Some(bytes)) => Some(bytes),
                Ok(None) if response_size == 0 => Some(Vec::new()),
                Ok(None) => None,
                Err(status) => {
                    log(
                        LogLevel::Error,
                        &format!("cannot read the Check response: {status:?}"),
                    );
                    None
                }
            }
        } else {
            let detail = hostcalls::get_grpc_status()
                .ok()
                .and_then(|(_, message)| message)
                .unwrap_or_default();
            log(
                LogLevel::Warn,
                &format!("Check failed with gRPC status {status_code}: {detail}"),
            );
            None
        };
        let action = self.flow.on_check_response(status_code, body.as_deref());
        if let Some(pending) = self.flow.take_elicitation() {
            let now = now_unix();
            with_pending(|list| {
                list.add(pending.clone(), now);
                (true, ())
            });
        }
        self.run(action, Phase::Callback);
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(
        &mut self,
        _num_headers: usize,
        end_of_stream: bool,
    ) -> types::Action {
        let headers = match hostcalls::get_map(MapType::HttpRequestHeaders) {
            Ok(h) => h,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("cannot read request headers: {status:?}"),
                );
                return self.send(LocalReply::error(
                    500,
                    None,
                    jsonrpc::INTERNAL_ERROR,
                    "the gateway could not read the request headers",
                ));
            }
        };
        let connection = Connection {
            source_address: property(&["source", "address"]),
            destination_address: property(&["destination", "address"]),
            peer_uri_san: property(&["connection", "uri_san_peer_certificate"]),
            protocol: property(&["request", "protocol"]),
            time: hostcalls::get_current_time().ok(),
        };
        let action = self.flow.on_headers(headers, connection, end_of_stream);
        self.run(action, Phase::Filter)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> types::Action {
        let action = self
            .flow
            .on_body(body_size, end_of_stream, read_request_body);
        self.run(action, Phase::Filter)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> types::Action {
        let action = self.flow.on_trailers(read_request_body);
        self.run(action, Phase::Filter)
    }

    fn on_http_response_headers(
        &mut self,
        _num_headers: usize,
        _end_of_stream: bool,
    ) -> types::Action {
        let headers = match hostcalls::get_map(MapType::HttpResponseHeaders) {
            Ok(h) => h,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("cannot read response headers: {status:?}"),
                );
                Vec::new()
            }
        };
        let action = self.flow.on_response_headers(&headers);
        if let ResponseHeadersAction::Respond(reply) = action {
            return self.send(reply);
        }
        if let ResponseHeadersAction::Remove(names) = action {
            for name in names {
                if let Err(status) =
                    hostcalls::remove_map_value(MapType::HttpResponseHeaders, &name)
                {
                    log(
                        LogLevel::Error,
                        &format!("could not remove response header {name}: {status:?}"),
                    );
                }
            }
        }
        types::Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> types::Action {
        let read = |size: usize| match hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
        {
            Ok(body) => body,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("cannot read the response body: {status:?}"),
                );
                None
            }
        };
        let action = if self.flow.is_announcing() {
            self.flow
                .on_stream_body(body_size, end_of_stream, read, take_completed)
        } else {
            self.flow.on_response_body(body_size, end_of_stream, read)
        };
        match action {
            ResponseBodyAction::Continue => types::Action::Continue,
            ResponseBodyAction::Buffer => types::Action::Pause,
            ResponseBodyAction::Replace(bytes) => {
                if let Err(status) =
                    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes)
                {
                    // The untrimmed bytes must not go on: end the stream.
                    log(
                        LogLevel::Error,
                        &format!("could not replace the response body: {status:?}"),
                    );
                    let _ = hostcalls::reset_http_request();
                    return types::Action::Pause;
                }
                types::Action::Continue
            }
        }
    }
}
