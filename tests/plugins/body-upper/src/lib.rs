//! Upper-cases bodies. Asks for the request body up front (`init`), and for
//! the response body per response (`BufferBody`) when the request path ends
//! in `/upper-response`.

use plumeway_sdk::{
    Action, Config, Error, Needs, Plugin, Request, RequestFilter, Response, ResponseAction, ResponseFilter,
};

/// The plugin.
#[derive(Debug)]
pub struct BodyUpper;

impl Plugin for BodyUpper {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn needs(&self) -> Needs {
        Needs {
            request_body: true,
            response_body: false,
        }
    }
}

impl RequestFilter for BodyUpper {
    fn on_request(&self, req: &mut Request<'_>) -> Result<Action, Error> {
        let body = req.body().map(<[u8]>::to_ascii_uppercase).unwrap_or_default();
        req.headers_mut().set("x-request-body-seen", body.len().to_string())?;
        req.set_body(body);
        Ok(Action::Continue)
    }
}

impl ResponseFilter for BodyUpper {
    fn on_response(&self, res: &mut Response<'_>) -> Result<ResponseAction, Error> {
        if !res.request().path().ends_with("/upper-response") {
            return Ok(ResponseAction::Continue);
        }
        let Some(body) = res.body().map(<[u8]>::to_ascii_uppercase) else {
            return Ok(ResponseAction::BufferBody);
        };
        res.set_body(body);
        Ok(ResponseAction::Continue)
    }
}

plumeway_sdk::export!(BodyUpper: RequestFilter, ResponseFilter);
