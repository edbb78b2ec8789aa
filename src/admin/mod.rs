//! The owner's desk: who may change Tower, and the path a change takes
//! from the request to the stage that owns it [H6].
//!
//! One thread ("admin"), owned by the service, answers every request
//! under `/api/` that the accept loop hands it (see `http::Desk`). It runs
//! at a lower priority than everything else, so a password check (a
//! deliberately slow hash) never competes with the audio. It owns the
//! configuration as saved, the browser sessions and the calibration.
//!
//! The path of a change, one function each, in order:
//! 1. The accept loop answered only a name Tower knows, refused a POST
//!    from another site's page, and asked the throttle whether the sender
//!    may try a password; then it handed the request over.
//! 2. [`Admin::authorize`]: a session cookie, or HTTP Basic with user
//!    `admin` (the throttle first, then one hash; see `throttle`).
//! 3. [`change::propose`]: the new values are written into the file's
//!    text and that text is loaded as at start, so a value passes exactly
//!    the checks a value in the file passes. Any refusal: 400 naming every
//!    refused key, and nothing changes.
//! 4. [`Control::prepare`] (the service): what can still fail is built
//!    before anything changes (a new socket input is bound).
//! 5. [`Store::save`]: the text is saved atomically, the previous file
//!    kept as `.bak`. A failed save: the error, and nothing changes.
//! 6. [`Control::apply`] (the service): each stage takes its new settings
//!    in its own type; keys read only at start are listed as needing a
//!    restart, which the page offers.
//! 7. The audit: one journal line per key (who, old → new, secrets as
//!    `***`), and the history in `/status` beside the encoder's.
//!
//! The password: `[admin] password` written by the owner in the file is
//! replaced there by its hash at start ([`Admin::new`]); without one, the
//! first visitor of the settings page sets it (`POST /api/claim`), which
//! the page warns about and the journal records.

pub mod calibrate;
pub mod password;
pub mod session;
pub mod throttle;
mod wifi;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::config::change::{self, FieldErrors, Incoming, Proposal, Taker};
use crate::config::edit::Edit;
use crate::config::store::{SaveError, Store};
use crate::config::{Loaded, Origin};
use crate::http::request::form_pairs;
use crate::http::{Desk, DeskJob, Request, Response};
use crate::ratelog::LogGate;
use crate::speakers::Outcome as Told;
use crate::status::{AdminCounters, ChangeLog};
use crate::worker::{StopSignal, Supervisor, Worker};
use calibrate::{Calibration, Gain, Step};
use session::Sessions;
use throttle::Throttle;

/// Requests that may wait for the admin thread; more get 503.
const QUEUE: usize = 16;
/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the calibration samples the input level.
const CALIBRATE_EVERY: Duration = Duration::from_millis(50);
/// The only user name of HTTP Basic auth.
pub const USER: &str = "admin";

/// What the admin thread needs from the running service: the stages'
/// side of a change, and the readings the page shows. The service
/// implements it by passing each call to its own thread.
pub trait Control: Send + 'static {
    /// What [`Control::prepare`] built, handed back to [`Control::apply`].
    type Prepared: Send;
    /// Builds what can fail before anything changes; errors by key.
    fn prepare(&self, proposal: &Proposal) -> Result<Self::Prepared, FieldErrors>;
    /// Hands each stage its new settings; warnings by key.
    fn apply(&self, prepared: Self::Prepared) -> BTreeMap<String, String>;
    /// Stops Tower and starts it again (for keys read only at start).
    fn restart(&self);
    /// Sets what is playing (cleaned, audited, not saved); returns the
    /// title in force.
    fn set_title(&self, who: &str, title: &str) -> String;
    /// The speakers on the network (`None` when `speakers.enabled` is off).
    fn speakers(&self) -> Option<&crate::speakers::SpeakersDesk>;
    /// Who is listening now (address, player, time, bytes).
    fn listeners(&self) -> Json;
    /// The input's peak level now, in dBFS (the louder channel).
    fn peak_dbfs(&self) -> f64;
    /// The capture gain in force and its range, or why it is unknown.
    fn gain(&self) -> Result<Gain, String>;
    /// What the settings page shows besides the settings (the sound
    /// cards, the device in use).
    fn inputs(&self) -> Json;
}

/// The accept loop's side of the desk.
pub struct DeskHandle {
    /// Jobs; `None` only wakes the thread to look at its stop signal.
    tx: SyncSender<Option<Box<DeskJob>>>,
    throttle: Arc<Mutex<Throttle>>,
    counters: Arc<AdminCounters>,
}

impl Desk for DeskHandle {
    fn may_try(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        let checked = self.throttle.lock().unwrap_or_else(|p| p.into_inner()).check(peer, now);
        if checked.is_err() {
            self.counters.attempts_throttled.fetch_add(1, Ordering::Relaxed);
        }
        checked
    }

    fn hand(&self, job: Box<DeskJob>) -> Result<(), Box<DeskJob>> {
        let Err(e) = self.tx.try_send(Some(job)) else {
            return Ok(());
        };
        self.counters.desk_busy.fetch_add(1, Ordering::Relaxed);
        let (TrySendError::Full(back) | TrySendError::Disconnected(back)) = e;
        // What comes back is the job just sent.
        back.map_or(Ok(()), Err)
    }
}

impl DeskHandle {
    /// Wakes the thread to see its stop signal: it has no timer of its own
    /// but a calibration's (a full queue means it is at work and looks at
    /// the signal after the job).
    pub fn wake(&self) {
        let _ = self.tx.try_send(None);
    }
}

/// The admin thread's state (see the module header).
pub struct Admin<C: Control> {
    control: C,
    loaded: Loaded,
    store: Box<dyn Store>,
    /// The password hash in force (from the file, or made at start).
    hash: Option<String>,
    /// Said on the page: Tower started from the backup file.
    notice: Option<String>,
    /// Saved keys that take effect at the next start.
    pending_restart: BTreeSet<String>,
    sessions: Sessions,
    /// Passwords found right lately (see `password::Recent`).
    recent: password::Recent,
    throttle: Arc<Mutex<Throttle>>,
    calibration: Calibration,
    history: Arc<ChangeLog>,
    counters: Arc<AdminCounters>,
    failed_log: LogGate,
    /// The SD image's Wi-Fi manager (see `wifi`).
    wifi: Option<Arc<crate::wifi::WifiWatch>>,
}

/// The desk's thread and the handle the HTTP front end hands jobs to.
pub struct Running {
    pub worker: Worker<()>,
    pub desk: Arc<DeskHandle>,
}

impl<C: Control> Admin<C> {
    /// The desk over `loaded`, saving to `store`. A plain password in the
    /// file is replaced there by its hash when the thread starts (see
    /// [`Admin::settle`]).
    pub fn new(
        control: C,
        loaded: Loaded,
        store: Box<dyn Store>,
        notice: Option<String>,
        history: Arc<ChangeLog>,
        counters: Arc<AdminCounters>,
    ) -> Admin<C> {
        let mut admin = Admin {
            control,
            hash: None,
            loaded,
            store,
            notice,
            pending_restart: BTreeSet::new(),
            sessions: Sessions::default(),
            recent: password::Recent::new(),
            throttle: Arc::new(Mutex::new(Throttle::default())),
            calibration: Calibration::default(),
            history,
            counters,
            failed_log: LogGate::new(Duration::from_secs(10)),
            wifi: None,
        };
        admin.hash = (!admin.loaded.config.admin.password_hash.is_empty())
            .then(|| admin.loaded.config.admin.password_hash.clone());
        admin.note_password();
        admin
    }

    /// What the thread does first, before any request: a plain password in
    /// the file is replaced there by its hash (and kept in memory as a hash
    /// if the file cannot be written). Not at construction: hashing and a
    /// save (which on the SD image waits for a root helper) must not hold
    /// up the start of the audio.
    pub fn settle(&mut self) {
        self.hash_plain_password();
        self.note_password();
    }

    fn note_password(&self) {
        self.counters.password_set.store(self.hash.is_some(), Ordering::Relaxed);
    }

    fn hash_plain_password(&mut self) {
        let admin = self.loaded.config.admin.clone();
        if admin.password.is_empty() {
            self.hash = (!admin.password_hash.is_empty()).then_some(admin.password_hash);
            return;
        }
        let hash = match password::hash(&admin.password) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(component = "admin", "{e}; changing settings is refused until it can be");
                return;
            }
        };
        self.hash = Some(hash.clone());
        if !matches!(self.loaded.origins.get("admin.password"), Some(Origin::File(_))) {
            return;
        }
        match self.save(&[
            Edit::Remove("admin.password".into()),
            Edit::Set("admin.password_hash".into(), toml::Value::String(hash)),
        ]) {
            Ok(()) => tracing::info!(
                component = "admin",
                file = %self.store.describe(),
                "the admin password in the file was replaced by its hash"
            ),
            Err(e) => tracing::warn!(
                component = "admin",
                "the admin password works, but its plain text could not be replaced by a hash in the file: {e}"
            ),
        }
    }

    /// Starts the admin thread; its end is reported to `supervisor`.
    pub fn start(self, supervisor: &Supervisor) -> std::io::Result<Running> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let desk = Arc::new(DeskHandle {
            tx,
            throttle: self.throttle.clone(),
            counters: self.counters.clone(),
        });
        let worker = Worker::spawn_supervised("admin", supervisor, move |stop| self.run(&stop, &rx))?;
        Ok(Running { worker, desk })
    }

    fn run(mut self, stop: &StopSignal, jobs: &Receiver<Option<Box<DeskJob>>>) {
        lower_priority();
        self.settle();
        while !stop.is_stopped() {
            let job = if self.calibration.running() {
                match jobs.recv_timeout(CALIBRATE_EVERY) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            if let Some(job) = job {
                self.serve(*job);
            }
            self.calibrate_step(Instant::now());
        }
    }

    /// Answers one request on its connection.
    fn serve(&mut self, job: DeskJob) {
        let DeskJob { request, peer, stream } = job;
        let response = self.answer(&request, peer, Instant::now());
        let mut stream = stream;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = stream.write_all(&response.into_bytes(request.is_head()));
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }

    /// The response to one request (what [`Admin::serve`] writes).
    pub fn answer(&mut self, rq: &Request, peer: SocketAddr, now: Instant) -> Response {
        let route = (rq.method.as_str(), rq.path.as_str());
        match route {
            ("GET", "/api/session") => self.session_view(rq, now),
            ("POST", "/api/claim") => self.claim(rq, peer, now),
            ("POST", "/api/login") => self.login(rq, peer, now),
            ("POST", "/api/logout") => self.logout(rq),
            ("POST", "/api/password") => self.change_password(rq, peer, now),
            (_, "/api/settings" | "/api/calibrate" | "/api/restart" | "/api/title" | "/api/listeners") => {
                if let Err(refused) = self.authorize(rq, peer, now) {
                    return refused;
                }
                match route {
                    ("GET", "/api/settings") => Response::json(&self.view()),
                    ("POST", "/api/settings") => self.change(rq, peer),
                    ("GET", "/api/calibrate") => Response::json(&self.calibration.report()),
                    ("POST", "/api/calibrate") => self.start_calibration(now),
                    ("POST", "/api/restart") => self.restart(peer),
                    ("POST", "/api/title") => self.set_title(rq, peer),
                    ("GET", "/api/listeners") => Response::json(&self.control.listeners()),
                    _ => error(405, "use GET to read and POST to change"),
                }
            }
            (_, "/api/wifi" | "/api/wifi/scan") => self.wifi(rq, peer, now),
            (_, path) if path == "/api/speakers" || path.starts_with("/api/speakers/") => {
                if let Err(refused) = self.authorize(rq, peer, now) {
                    return refused;
                }
                self.speakers(rq, peer)
            }
            (_, "/api/session" | "/api/claim" | "/api/login" | "/api/logout" | "/api/password") => {
                error(405, "use POST (GET for /api/session)")
            }
            _ => error(404, "no such resource"),
        }
    }

    /// Step 2: a live session, or the password by HTTP Basic.
    fn authorize(&mut self, rq: &Request, peer: SocketAddr, now: Instant) -> Result<(), Response> {
        if let Some(token) = session::token_in(rq.header("Cookie"))
            && self.sessions.valid(token, now)
        {
            return Ok(());
        }
        let unauthorized = |message: &str| {
            let r = error(401, message);
            // Tower's own page asks in its form, not in the browser's box.
            if rq.header("X-Tower-Page").is_some() {
                r
            } else {
                r.with("WWW-Authenticate", "Basic realm=\"Tower\", charset=\"UTF-8\"")
            }
        };
        if self.hash.is_none() {
            return Err(unauthorized(
                "no admin password is set yet: open /settings in a browser to set one",
            ));
        }
        let Some(header) = rq.header("Authorization") else {
            return Err(unauthorized(
                "the admin password is needed: log in on /settings, or use HTTP Basic with user admin",
            ));
        };
        match basic_credentials(header) {
            Some((user, pass)) if user == USER => self.check_password(&pass, peer, now),
            _ => Err(unauthorized("HTTP Basic with user admin and the admin password")),
        }
    }

    /// One password attempt: the throttle, then one hash (none for a
    /// password found right a moment ago).
    fn check_password(&mut self, candidate: &str, peer: SocketAddr, now: Instant) -> Result<(), Response> {
        if self.recent.knows(candidate, now) {
            return Ok(());
        }
        let permitted = {
            let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
            t.check(peer.ip(), now).and_then(|()| t.take_hash(now))
        };
        if let Err(wait) = permitted {
            self.counters.attempts_throttled.fetch_add(1, Ordering::Relaxed);
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(
                error(429, &format!("too many password attempts; try again in {secs} s"))
                    .with("Retry-After", secs.to_string()),
            );
        }
        let ok = self.hash.as_deref().is_some_and(|h| password::verify(h, candidate));
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            t.succeeded(peer.ip());
            self.recent.remember(candidate, now);
            return Ok(());
        }
        t.failed(peer.ip(), now);
        drop(t);
        self.counters.wrong_passwords.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.failed_log.allow(now) {
            tracing::warn!(component = "admin", peer = %peer.ip(), suppressed, "wrong admin password");
        }
        Err(error(401, "wrong password"))
    }

    fn session_view(&self, rq: &Request, now: Instant) -> Response {
        let logged_in = session::token_in(rq.header("Cookie")).is_some_and(|t| self.sessions.valid(t, now));
        Response::json(&json!({ "password_set": self.hash.is_some(), "logged_in": logged_in }))
    }

    /// `POST /api/claim`: the first password, while none is set.
    fn claim(&mut self, rq: &Request, peer: SocketAddr, now: Instant) -> Response {
        if self.hash.is_some() {
            return error(409, "a password is already set; log in");
        }
        let Some(new) = field(rq, "password") else {
            return error(400, "send the new password as password");
        };
        if let Err(accepted) = password::check_new(&new) {
            return error(400, &format!("password: {accepted}"));
        }
        // Claiming counts against the throttle like a login.
        if let Err(wait) = self.throttle.lock().unwrap_or_else(|p| p.into_inner()).take_hash(now) {
            return error(429, "busy; try again").with("Retry-After", wait.as_secs().max(1).to_string());
        }
        match self.set_password(&new) {
            Ok(saved) => {
                tracing::warn!(
                    component = "admin",
                    peer = %peer.ip(),
                    "the admin password was set from {} (claimed on the settings page){}",
                    peer.ip(),
                    if saved { "" } else { "; not saved: it lasts until Tower stops" }
                );
                self.history
                    .record(&peer.ip().to_string(), "admin.password", "(none)", "***");
                self.logged_in(rq, json!({ "ok": true, "saved": saved }))
            }
            Err(e) => error(500, &e),
        }
    }

    /// `POST /api/login`: a session cookie for the right password.
    fn login(&mut self, rq: &Request, peer: SocketAddr, now: Instant) -> Response {
        let Some(candidate) = field(rq, "password") else {
            return error(400, "send the password as password");
        };
        if self.hash.is_none() {
            return error(409, "no password is set yet: set one first");
        }
        if let Err(refused) = self.check_password(&candidate, peer, now) {
            return refused;
        }
        tracing::info!(component = "admin", peer = %peer.ip(), "owner logged in from {}", peer.ip());
        self.logged_in(rq, json!({ "ok": true }))
    }

    /// A new session for this browser: JSON for the page's script, a
    /// redirect back to the page for a plain form.
    fn logged_in(&mut self, rq: &Request, body: Json) -> Response {
        let cookie = match self.sessions.open(Instant::now()) {
            Ok(token) => Sessions::cookie(&token),
            Err(e) => return error(500, &format!("cannot make a session: {e}")),
        };
        if is_form(rq) {
            return Response::text(303, "logged in")
                .with("Location", "/settings")
                .with("Set-Cookie", cookie);
        }
        Response::json(&body).with("Set-Cookie", cookie)
    }

    fn logout(&mut self, rq: &Request) -> Response {
        if let Some(token) = session::token_in(rq.header("Cookie")) {
            self.sessions.close(token);
        }
        Response::json(&json!({ "ok": true })).with("Set-Cookie", Sessions::removal())
    }

    /// `POST /api/password`: the current password and a new one.
    fn change_password(&mut self, rq: &Request, peer: SocketAddr, now: Instant) -> Response {
        let (Some(current), Some(new)) = (field(rq, "password"), field(rq, "new_password")) else {
            return error(400, "send password (the current one) and new_password");
        };
        if let Err(refused) = self.check_password(&current, peer, now) {
            return refused;
        }
        if let Err(accepted) = password::check_new(&new) {
            return error(400, &format!("new_password: {accepted}"));
        }
        match self.set_password(&new) {
            Ok(saved) => {
                self.sessions.close_all();
                tracing::info!(component = "admin", peer = %peer.ip(), "admin password changed from {}", peer.ip());
                self.history
                    .record(&peer.ip().to_string(), "admin.password", "***", "***");
                self.logged_in(rq, json!({ "ok": true, "saved": saved }))
            }
            Err(e) => error(500, &e),
        }
    }

    /// Hashes `new` and saves the hash; `Ok(false)` when it could not be
    /// saved (it is in force until Tower stops).
    fn set_password(&mut self, new: &str) -> Result<bool, String> {
        let hash = password::hash(new).map_err(|e| e.to_string())?;
        let saved = self.save(&[
            Edit::Remove("admin.password".into()),
            Edit::Set("admin.password_hash".into(), toml::Value::String(hash.clone())),
        ]);
        self.hash = Some(hash);
        self.recent.forget();
        self.note_password();
        if let Err(e) = &saved {
            tracing::warn!(component = "admin", "the new admin password is not saved: {e}");
        }
        Ok(saved.is_ok())
    }

    /// Applies `edits` to the file and saves it (for the password, which
    /// no stage takes).
    fn save(&mut self, edits: &[Edit]) -> Result<(), String> {
        let next = change::with_edits(&self.loaded, edits).map_err(|e| change::message(&e))?;
        self.store
            .save(&self.loaded.text, &next.text)
            .map_err(|e| e.to_string())?;
        self.loaded = next;
        Ok(())
    }

    /// `GET /api/settings`: every key's value (secrets blank), which keys
    /// the page cannot change and why, and what it shows besides.
    fn view(&self) -> Json {
        let mut values = serde_json::Map::new();
        for (key, value) in change::flatten(&self.loaded.config.redacted()) {
            if key.starts_with("admin.") {
                continue;
            }
            let mut json = serde_json::to_value(&value).unwrap_or(Json::Null);
            if crate::config::is_secret(&key) {
                json = Json::String(String::new());
            }
            if key == "icecast"
                && let Some(list) = json.as_array_mut()
            {
                for t in list {
                    t["password"] = Json::String(String::new());
                }
            }
            values.insert(key, json);
        }
        let locked: BTreeMap<&String, String> = self
            .loaded
            .origins
            .iter()
            .filter(|(_, o)| matches!(o, Origin::Env(_) | Origin::Flag(_)))
            .map(|(k, o)| (k, o.to_string()))
            .collect();
        let live: Vec<&String> = values.keys().filter(|k| change::taker(k) != Taker::Restart).collect();
        json!({
            "values": values,
            "locked": locked,
            "live": live,
            "saves_to": self.store.describe(),
            "notice": self.notice,
            "restart_needed": self.pending_restart,
            "inputs": self.control.inputs(),
            "calibration": self.calibration.report(),
        })
    }

    /// `POST /api/settings`: steps 3 to 7 of the module header.
    fn change(&mut self, rq: &Request, peer: SocketAddr) -> Response {
        let asked = match asked(rq) {
            Ok(a) if a.is_empty() => return error(400, "nothing to change: send a JSON object of settings"),
            Ok(a) => a,
            Err(why) => return error(400, &why),
        };
        match self.submit(&asked, &peer.ip().to_string()) {
            Ok(outcome) => Response::json(&outcome),
            Err(Refused::Fields(errors)) => Response::json(&json!({ "errors": errors })).with_status(400),
            Err(Refused::Save(e)) => {
                let status = if matches!(e, SaveError::ChangedOnDisk { .. }) {
                    409
                } else {
                    500
                };
                Response::json(&json!({ "error": format!("nothing was changed: {e}") })).with_status(status)
            }
        }
    }

    /// Checks, prepares, saves and applies a change (steps 3 to 7).
    fn submit(&mut self, asked: &[(String, Incoming)], who: &str) -> Result<Outcome, Refused> {
        let proposal = change::propose(&self.loaded, asked).map_err(Refused::Fields)?;
        if proposal.changed.is_empty() {
            return Ok(Outcome::default());
        }
        let prepared = self.control.prepare(&proposal).map_err(Refused::Fields)?;
        self.store
            .save(&self.loaded.text, &proposal.loaded.text)
            .map_err(Refused::Save)?;
        let warnings = self.control.apply(prepared);
        let old = change::flatten(&self.loaded.config);
        let new = change::flatten(&proposal.loaded.config);
        let mut outcome = Outcome {
            warnings,
            saved_to: self.store.describe(),
            ..Outcome::default()
        };
        for key in &proposal.changed {
            let (from, to) = (change::shown(key, old.get(key)), change::shown(key, new.get(key)));
            tracing::info!(component = "admin", peer = who, key = %key, "setting {key} changed by {who}: {from} → {to}");
            self.history.record(who, key, &from, &to);
            self.counters.settings_changed.fetch_add(1, Ordering::Relaxed);
            if change::taker(key) == Taker::Restart {
                self.pending_restart.insert(key.clone());
                outcome.restart_needed.push(key.clone());
            } else {
                outcome.applied.push(key.clone());
            }
        }
        self.loaded = proposal.loaded;
        Ok(outcome)
    }

    fn start_calibration(&mut self, now: Instant) -> Response {
        if self.calibration.running() {
            return Response::json(&self.calibration.report()).with_status(409);
        }
        if let Some(origin @ (Origin::Env(_) | Origin::Flag(_))) = self.loaded.origins.get("capture.level") {
            return error(
                409,
                &format!("capture.level is set by {origin}; the page cannot change it"),
            );
        }
        self.calibration.start(self.control.gain(), now);
        Response::json(&self.calibration.report()).with_status(202)
    }

    /// Feeds the calibration and sets the level it asks for, through the
    /// same path as any change.
    fn calibrate_step(&mut self, now: Instant) {
        if !self.calibration.running() {
            return;
        }
        self.calibration.observe(self.control.peak_dbfs(), now);
        if let Step::SetLevel(db) = self.calibration.step(now) {
            let asked = [("capture.level".to_string(), Incoming::Text(format!("{db:.1}dB")))];
            let outcome = self.submit(&asked, "calibrate").map(|_| ()).map_err(|e| match e {
                Refused::Fields(f) => f.into_values().collect::<Vec<_>>().join("; "),
                Refused::Save(e) => e.to_string(),
            });
            self.calibration.level_set(outcome, now);
        }
    }

    /// `POST /api/title {"title": "…"}`: what is playing now. Not saved
    /// (a title is not configuration): `station.title` stays the title at
    /// start.
    fn set_title(&mut self, rq: &Request, peer: SocketAddr) -> Response {
        let Some(title) = field(rq, "title") else {
            return error(400, "send the title as title, e.g. {\"title\": \"Side B\"}");
        };
        let title = self.control.set_title(&peer.ip().to_string(), &title);
        Response::json(&json!({ "title": title }))
    }

    /// `/api/speakers…`: the list, a search, Play and Stop.
    fn speakers(&mut self, rq: &Request, peer: SocketAddr) -> Response {
        let Some(desk) = self.control.speakers() else {
            return error(404, "speakers are not searched for (speakers.enabled = false)");
        };
        match (rq.method.as_str(), rq.path.as_str()) {
            ("GET", "/api/speakers") => Response::json(&desk.list()),
            ("GET", "/api/speakers/search") => Response::json(&desk.search_view()),
            ("POST", "/api/speakers/search") => {
                desk.search();
                Response::json(&desk.search_view()).with_status(202)
            }
            ("POST", path @ ("/api/speakers/play" | "/api/speakers/stop")) => {
                let Some(id) = field(rq, "id") else {
                    return error(400, "send the speaker's id, e.g. {\"id\": \"uuid:…\"}");
                };
                let play = path.ends_with("play");
                tracing::info!(component = "speakers", peer = %peer.ip(), speaker = %id, "{} asked for {id} from {}", if play { "play" } else { "stop" }, peer.ip());
                let outcome = if play { desk.play(&id) } else { desk.stop(&id) };
                let speaker = desk.list().into_iter().find(|s| s.id == id);
                match outcome {
                    Told::Done => Response::json(&json!({ "ok": true, "speaker": speaker })),
                    Told::Pending => Response::json(&json!({ "pending": true, "speaker": speaker })).with_status(202),
                    Told::UnknownId => error(404, "no such speaker (search again)"),
                    Told::Failed(why) => Response::json(&json!({ "error": why, "speaker": speaker })).with_status(502),
                }
            }
            (_, "/api/speakers" | "/api/speakers/search" | "/api/speakers/play" | "/api/speakers/stop") => error(
                405,
                "GET /api/speakers and /api/speakers/search; POST search, play and stop",
            ),
            _ => error(404, "no such resource"),
        }
    }

    fn restart(&mut self, peer: SocketAddr) -> Response {
        tracing::warn!(component = "admin", peer = %peer.ip(), "restart asked for from {} on the settings page", peer.ip());
        self.control.restart();
        Response::json(&json!({ "restarting": true })).with_status(202)
    }
}

/// What `POST /api/settings` answers when the change was taken.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// Keys in effect now.
    pub applied: Vec<String>,
    /// Keys saved that take effect at the next start.
    pub restart_needed: Vec<String>,
    /// Taken, with something to know (e.g. a fallback WAV that cannot be
    /// played), by key.
    pub warnings: BTreeMap<String, String>,
    pub saved_to: String,
}

enum Refused {
    Fields(FieldErrors),
    Save(SaveError),
}

fn error(status: u16, message: &str) -> Response {
    Response::json(&json!({ "error": message })).with_status(status)
}

/// A form body rather than JSON. `curl -d '{…}'` labels JSON as a form,
/// so a body that starts with `{` or `[` is JSON whatever its label.
fn is_form(rq: &Request) -> bool {
    let json_like = rq
        .body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['));
    !json_like
        && rq
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
}

/// One field of a JSON object or form body.
fn field(rq: &Request, name: &str) -> Option<String> {
    if is_form(rq) {
        return form_pairs(&rq.body)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v);
    }
    let json: Json = serde_json::from_slice(&rq.body).ok()?;
    json.get(name)?.as_str().map(str::to_string)
}

/// The keys and values of a change: a JSON object, or a form.
fn asked(rq: &Request) -> Result<Vec<(String, Incoming)>, String> {
    if is_form(rq) {
        return Ok(form_pairs(&rq.body)
            .into_iter()
            .map(|(k, v)| (k, Incoming::Text(v)))
            .collect());
    }
    match serde_json::from_slice::<Json>(&rq.body) {
        Ok(Json::Object(map)) => Ok(map.into_iter().map(|(k, v)| (k, Incoming::Json(v))).collect()),
        Ok(_) => {
            Err("the body must be a JSON object whose keys are settings, e.g. {\"capture.level\": \"-6dB\"}".into())
        }
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// The user and password of an `Authorization: Basic …` header.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(encoded.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Standard base64 (with padding) to bytes; `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    if !s.len().is_multiple_of(4) || s.len() - bytes.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// Below everything else: a password hash waits for the audio.
fn lower_priority() {
    // SAFETY: setpriority on this thread's id (Linux: a thread is a
    // process for PRIO_PROCESS) with a plain integer.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

#[cfg(test)]
mod tests;
