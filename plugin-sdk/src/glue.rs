//! The bridge between the generated bindings and a plugin's traits. Hidden
//! from plugin authors; [`crate::export!`] wires it up.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::thread::LocalKey;

use crate::bindings::{balancer, error_handler, imports, lifecycle, request_filter, response_filter, rewrite};
use crate::{
    Action, Balancer, Config, ErrorHandler, Headers, LocalResponse, Plugin, RequestFilter, ResponseFilter, Rewrite,
};
use crate::{Endpoint, ErrorKind, PickContext, ProxyError, Request, Response, ResponseAction};

use imports::plumeway::plugin::types as wit;

/// Where the plugin built by `init` lives: a slot of its own type, which
/// [`crate::export!`] declares in the plugin's crate. A component instance
/// is single-threaded and built once, so one slot is all there is; being
/// typed, it is read without the downcast (a type id fetched and compared)
/// that a slot for any plugin cost on every call.
pub trait Slot: Sized + 'static {
    /// The slot.
    fn slot() -> &'static LocalKey<RefCell<Option<Self>>>;
}

/// Implements every generated `Guest` trait for the plugin type `P`.
#[derive(Debug)]
pub struct Glue<P>(PhantomData<P>);

fn with_plugin<P: Slot, R>(f: impl FnOnce(&P) -> R) -> Result<R, wit::PluginError> {
    P::slot().with(|slot| match slot.borrow().as_ref() {
        Some(plugin) => Ok(f(plugin)),
        None => Err(wit::PluginError {
            message: "plugin called before init".into(),
        }),
    })
}

fn plugin_error(e: crate::Error) -> wit::PluginError {
    wit::PluginError {
        message: e.message().to_owned(),
    }
}

fn response(r: LocalResponse) -> wit::Response {
    wit::Response {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

impl<P: Plugin + Slot> lifecycle::exports::plumeway::plugin::lifecycle::Guest for Glue<P> {
    fn init(config: String) -> Result<lifecycle::exports::plumeway::plugin::lifecycle::Needs, String> {
        use lifecycle::exports::plumeway::plugin::lifecycle::Needs as WitNeeds;
        let plugin = P::init(Config::from_json(config))?;
        let needs = plugin.needs();
        let mut flags = WitNeeds::empty();
        if needs.request_body {
            flags |= WitNeeds::REQUEST_BODY;
        }
        if needs.response_body {
            flags |= WitNeeds::RESPONSE_BODY;
        }
        P::slot().with(|slot| *slot.borrow_mut() = Some(plugin));
        Ok(flags)
    }
}

impl<P: Rewrite + Slot> rewrite::exports::plumeway::plugin::rewrite::Guest for Glue<P> {
    fn rewrite(path_with_query: String) -> Result<Option<String>, wit::PluginError> {
        let req = Request::with_path(Headers::host(true), path_with_query);
        with_plugin::<P, _>(|p| p.rewrite(&req))?.map_err(plugin_error)
    }
}

impl<P: RequestFilter + Slot> request_filter::exports::plumeway::plugin::request_filter::Guest for Glue<P> {
    fn on_request(
        body: Option<Vec<u8>>,
    ) -> Result<request_filter::exports::plumeway::plugin::request_filter::RequestAction, wit::PluginError> {
        use request_filter::exports::plumeway::plugin::request_filter::{RequestAction, RequestEdits};
        let mut req = Request::host(Headers::host(false), body);
        let action = with_plugin::<P, _>(|p| p.on_request(&mut req))?.map_err(plugin_error)?;
        Ok(match action {
            Action::Continue => RequestAction::Continue(RequestEdits {
                path_with_query: req.new_path,
                body: req.new_body,
                stash: req.stash,
            }),
            Action::BufferBody => RequestAction::BufferBody,
            Action::Respond(r) => RequestAction::Respond(response(r)),
        })
    }
}

impl<P: ResponseFilter + Slot> response_filter::exports::plumeway::plugin::response_filter::Guest for Glue<P> {
    fn on_response(
        status: u16,
        body: Option<Vec<u8>>,
        stash: Option<Vec<u8>>,
    ) -> Result<response_filter::exports::plumeway::plugin::response_filter::ResponseAction, wit::PluginError> {
        use response_filter::exports::plumeway::plugin::response_filter::{ResponseAction as WitAction, ResponseEdits};
        let mut res = Response::host(status, Headers::host(false), body, stash);
        let action = with_plugin::<P, _>(|p| p.on_response(&mut res))?.map_err(plugin_error)?;
        Ok(match action {
            ResponseAction::Continue => WitAction::Continue(ResponseEdits {
                status: res.new_status,
                body: res.new_body,
            }),
            ResponseAction::BufferBody => WitAction::BufferBody,
            ResponseAction::Replace(r) => WitAction::Replace(response(r)),
        })
    }
}

impl<P: ErrorHandler + Slot> error_handler::exports::plumeway::plugin::error_handler::Guest for Glue<P> {
    fn on_error(
        err: error_handler::exports::plumeway::plugin::error_handler::ProxyError,
    ) -> Result<wit::Response, wit::PluginError> {
        use error_handler::exports::plumeway::plugin::error_handler::ErrorKind as K;
        let kind = match err.kind {
            K::DestinationNotFound => ErrorKind::DestinationNotFound,
            K::DestinationUnavailable => ErrorKind::DestinationUnavailable,
            K::ConnectionRefused => ErrorKind::ConnectionRefused,
            K::ConnectionTimeout => ErrorKind::ConnectionTimeout,
            K::HttpResponseTimeout => ErrorKind::HttpResponseTimeout,
            K::HttpProtocolError => ErrorKind::HttpProtocolError,
            K::HttpRequestDenied => ErrorKind::HttpRequestDenied,
            K::HttpRequestError => ErrorKind::HttpRequestError,
            K::PluginFailed(name) => ErrorKind::PluginFailed(name),
            K::Other(what) => ErrorKind::Other(what),
        };
        let err = ProxyError {
            kind,
            status: err.status,
            upstream: err.upstream,
            endpoint: err.endpoint,
            attempts: err.attempts,
            request_id: err.request_id,
        };
        let req = Request::host(Headers::host(true), None);
        with_plugin::<P, _>(|p| p.on_error(&req, &err))?
            .map(response)
            .map_err(plugin_error)
    }
}

impl<P: Balancer + Slot> balancer::exports::plumeway::plugin::balancer::Guest for Glue<P> {
    fn pick(
        endpoints: Vec<balancer::exports::plumeway::plugin::balancer::EndpointState>,
        ctx: balancer::exports::plumeway::plugin::balancer::PickContext,
    ) -> Result<Option<u32>, wit::PluginError> {
        let endpoints: Vec<Endpoint> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| Endpoint::new(i, e.weight, e.healthy, e.in_flight))
            .collect();
        let ctx = PickContext {
            generation: ctx.generation,
            attempt: ctx.attempt,
            tried: ctx.tried.into_iter().map(|i| i as usize).collect(),
        };
        let req = Request::host(Headers::host(true), None);
        let picked = with_plugin::<P, _>(|p| p.pick(&req, &endpoints, &ctx))?.map_err(plugin_error)?;
        picked
            .map(|i| {
                u32::try_from(i).map_err(|_| wit::PluginError {
                    message: format!("index {i} out of range"),
                })
            })
            .transpose()
    }
}
