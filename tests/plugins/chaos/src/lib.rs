//! Misbehaves when the request asks, with `x-chaos: MODE`; otherwise
//! reports in `x-instance-requests` how many requests this instance has
//! served (to watch instances being reused and replaced).

use std::cell::Cell;

use plumeway_sdk::{
    Action, Config, Error, LocalResponse, Plugin, Request, RequestFilter, Response, ResponseAction, ResponseFilter,
};

/// The plugin.
#[derive(Debug)]
pub struct Chaos {
    served: Cell<u64>,
}

impl Plugin for Chaos {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Self { served: Cell::new(0) })
    }
}

impl RequestFilter for Chaos {
    fn on_request(&self, req: &mut Request<'_>) -> Result<Action, Error> {
        let mode = req.headers().get("x-chaos").unwrap_or_default();
        match mode.as_str() {
            "trap" => panic!("chaos: asked to trap"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // A hook cannot wait: plugins run to completion on the proxy's
            // own thread.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(5));
                Ok(Action::Continue)
            }
            // There are no files or network to reach.
            "file" => {
                let passwd = std::fs::read("/etc/passwd").map_err(|e| Error::new(format!("chaos: {e}")))?;
                req.headers_mut().set("x-passwd-bytes", passwd.len().to_string())?;
                Ok(Action::Continue)
            }
            "bad-header" => Ok(Action::Respond(LocalResponse::new(200).header("bad header", "x"))),
            "bad-header-value" => Ok(Action::Respond(LocalResponse::new(200).header("x-ok", "line\r\nbreak"))),
            "bad-path" => {
                req.set_path_with_query("no-leading-slash");
                Ok(Action::Continue)
            }
            "bad-status" => Ok(Action::Respond(LocalResponse::new(1000))),
            "error" => Err(Error::new("chaos: asked to fail")),
            "forbidden" => {
                req.headers_mut().set("content-length", "0")?;
                Ok(Action::Continue)
            }
            _ => {
                let n = self.served.get() + 1;
                self.served.set(n);
                req.headers_mut().set("x-instance-requests", n.to_string())?;
                Ok(Action::Continue)
            }
        }
    }
}

impl ResponseFilter for Chaos {
    fn on_response(&self, res: &mut Response<'_>) -> Result<ResponseAction, Error> {
        if res.request().path().ends_with("/trap-response") {
            panic!("chaos: asked to trap in on_response");
        }
        res.headers_mut().set("x-chaos-response", "seen")?;
        Ok(ResponseAction::Continue)
    }
}

plumeway_sdk::export!(Chaos: RequestFilter, ResponseFilter);
