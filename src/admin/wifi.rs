//! The Wi-Fi part of the owner's desk [W2], [W5], on the admin thread and
//! behind the admin password like every `/api/` route:
//!
//! - `GET /api/wifi`: what `tower wifi-manager` says (the network joined,
//!   its signal and address, or the setup hotspot and why it is open, and
//!   the networks the radio sees);
//! - `POST /api/wifi` `{"ssid", "psk", "country"}`: a network to join,
//!   checked as the `wifi.txt` it makes ([`WifiTxt::from_fields`], the
//!   image reader's rules; an empty `psk` is an open network, a hidden one
//!   needs nothing more than its name), then saved through the store's
//!   root helper, which checks it again and writes it on the FAT partition
//!   atomically; the manager then leaves the hotspot (or the old network)
//!   and joins it. Each error is named beside its field, and nothing is
//!   saved;
//! - `POST /api/wifi/scan`: asks the manager for a new scan.
//!
//! Only where Tower was started with `--wifi-via` (the SD image); else 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::{Admin, Control, error, field};
use crate::http::{Request, Response};
use crate::wifi::WifiWatch;
use crate::wifi::txt::WifiTxt;

impl<C: Control> Admin<C> {
    /// Also answers `/api/wifi`, from the manager's state in `wifi`.
    pub fn with_wifi(mut self, wifi: Option<Arc<WifiWatch>>) -> Self {
        self.wifi = wifi;
        self
    }

    /// `/api/wifi` and `/api/wifi/scan`.
    pub(super) fn wifi(&mut self, rq: &Request, peer: SocketAddr, now: Instant) -> Response {
        if let Err(refused) = self.authorize(rq, peer, now) {
            return refused;
        }
        let Some(watch) = self.wifi.clone() else {
            return error(404, "Wi-Fi is not managed by Tower here (only on the SD image)");
        };
        match (rq.method.as_str(), rq.path.as_str()) {
            ("GET", "/api/wifi") => {
                let state = watch.state(now);
                Response::json(&json!({ "managed": state.is_some(), "state": state }))
            }
            ("POST", "/api/wifi") => self.join(rq, peer, &watch, now),
            ("POST", "/api/wifi/scan") => match watch.ask_scan() {
                Ok(()) => Response::json(&json!({ "scanning": true })).with_status(202),
                Err(e) => error(500, &format!("cannot ask for a scan: {e}")),
            },
            (_, "/api/wifi" | "/api/wifi/scan") => error(405, "use GET to read and POST to change"),
            _ => error(404, "no such resource"),
        }
    }

    /// `POST /api/wifi`: checks, saves, logs.
    fn join(&mut self, rq: &Request, peer: SocketAddr, watch: &WifiWatch, now: Instant) -> Response {
        let Some(ssid) = field(rq, "ssid") else {
            return Response::json(&json!({ "errors": { "ssid": "the network's name is needed" } })).with_status(400);
        };
        let psk = field(rq, "psk").unwrap_or_default();
        let state = watch.state(now);
        // The country in force is kept when the page sends none.
        let country = field(rq, "country")
            .filter(|c| !c.trim().is_empty())
            .or_else(|| state.as_ref().and_then(|s| s.country.clone()))
            .unwrap_or_default();
        let txt = match WifiTxt::from_fields(&ssid, &psk, &country) {
            Ok(t) => t,
            Err(e) => {
                let message = e.message.replace("wifi.txt: ", "");
                return Response::json(&json!({ "errors": { e.field.key(): message } })).with_status(400);
            }
        };
        if let Err(e) = self.store.save_wifi(&txt.render()) {
            return Response::json(&json!({ "error": format!("nothing was changed: {e}") })).with_status(500);
        }
        let who = peer.ip().to_string();
        let old = state
            .as_ref()
            .and_then(|s| s.saved_ssid.clone())
            .unwrap_or_else(|| "(none)".into());
        let open = if txt.psk.is_none() {
            " (open network)"
        } else {
            " (password ***)"
        };
        tracing::info!(
            component = "admin",
            peer = %who,
            key = "wifi.ssid",
            "Wi-Fi network changed by {who}: \"{old}\" → \"{}\"{open}",
            txt.ssid
        );
        self.history.record(&who, "wifi.ssid", &old, &txt.ssid);
        let on_hotspot = state.as_ref().is_some_and(|s| s.hotspot.open);
        Response::json(&json!({
            "saved": true,
            "ssid": txt.ssid,
            "country": txt.country,
            "warnings": txt.warnings,
            "hotspot_open": on_hotspot,
        }))
    }
}
