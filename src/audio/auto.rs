//! `device = "auto"`: Tower finds the capture card itself.
//!
//! A [`CaptureSource`] around another: at every open it enumerates the
//! sound cards (the control interface only, never another card's PCM),
//! lets [`devices::choose`] pick one (USB first; cards with playback only
//! never), and opens that card's `plughw:CARD=<id>,DEV=<n>`. The capture
//! loop re-opens a device that fails or cannot be opened with a backoff
//! capped at 1 s, so while nothing works the cards are looked at again
//! about once a second: a card plugged in after boot is live within 2 s,
//! and one re-enumerated under a new index is found again by its id.
//!
//! Runs on the capture thread, like the source it wraps.

use std::time::Duration;

use super::devices::{self, Choice, DeviceList};
use super::source::{CaptureError, CaptureSource, ErrorClass, Selection};

/// What the device name `auto` is called in logs before a card is chosen.
pub const AUTO: &str = "auto";

/// The machine's sound cards, as `tower devices` lists them.
pub trait CardLister: Send {
    fn list(&mut self) -> DeviceList;
}

/// alsa-lib's card enumeration.
pub struct SystemCards;

impl CardLister for SystemCards {
    fn list(&mut self) -> DeviceList {
        devices::list()
    }
}

/// Makes the source for a chosen device name.
pub type Opener = Box<dyn FnMut(&str) -> Box<dyn CaptureSource> + Send>;

pub struct AutoCapture {
    cards: Box<dyn CardLister>,
    opener: Opener,
    current: Option<(Choice, Box<dyn CaptureSource>)>,
    /// Why no card was chosen at the last look.
    nothing: String,
}

impl AutoCapture {
    pub fn new(cards: Box<dyn CardLister>, opener: Opener) -> Self {
        AutoCapture {
            cards,
            opener,
            current: None,
            nothing: "no card chosen yet".into(),
        }
    }
}

impl CaptureSource for AutoCapture {
    fn device(&self) -> &str {
        match &self.current {
            Some((choice, _)) => &choice.device,
            None => AUTO,
        }
    }

    fn open(&mut self) -> Result<(), CaptureError> {
        self.close();
        let choice = match devices::choose(&self.cards.list()) {
            Ok(c) => c,
            Err(why) => {
                self.current = None;
                self.nothing = why.to_string();
                return Err(CaptureError::Open {
                    device: AUTO.into(),
                    reason: self.nothing.clone(),
                });
            }
        };
        let source = match self.current.take() {
            Some((old, source)) if old.device == choice.device => source,
            _ => (self.opener)(&choice.device),
        };
        let (_, source) = self.current.insert((choice, source));
        source.open()
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, CaptureError> {
        match &mut self.current {
            Some((_, source)) => source.read(buf, timeout),
            None => Err(CaptureError::Failed {
                device: AUTO.into(),
                class: ErrorClass::BadState,
                reason: "no device chosen".into(),
            }),
        }
    }

    fn close(&mut self) {
        if let Some((_, source)) = &mut self.current {
            source.close();
        }
    }

    fn selection(&self) -> Selection {
        match &self.current {
            Some((choice, _)) => Selection {
                name: choice.device.clone(),
                auto: true,
                reason: choice.reason.clone(),
                card: Some(choice.card_id.clone()),
            },
            None => Selection {
                name: AUTO.into(),
                auto: true,
                reason: self.nothing.clone(),
                card: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::audio::devices::CardDevice;
    use crate::audio::fake::{FakeCapture, FakeCaptureScript};

    /// Cards as a test says they are now.
    #[derive(Clone, Default)]
    struct Cards(Arc<Mutex<DeviceList>>);

    impl Cards {
        fn set(&self, cards: Vec<CardDevice>) {
            self.0.lock().expect("cards").cards = cards;
        }
    }

    impl CardLister for Cards {
        fn list(&mut self) -> DeviceList {
            self.0.lock().expect("cards").clone()
        }
    }

    fn usb(index: i32, id: &str) -> CardDevice {
        CardDevice {
            card_id: id.into(),
            card_index: index,
            card_name: format!("{id} USB"),
            device: 0,
            device_name: "USB Audio".into(),
            usb: true,
        }
    }

    fn auto(cards: &Cards, opened: &Arc<Mutex<Vec<String>>>) -> AutoCapture {
        let opened = opened.clone();
        AutoCapture::new(
            Box::new(cards.clone()),
            Box::new(move |name: &str| {
                opened.lock().expect("opened").push(name.to_string());
                Box::new(FakeCapture::new(name, FakeCaptureScript::default())) as Box<dyn CaptureSource>
            }),
        )
    }

    #[test]
    fn no_card_fails_to_open_with_the_reason_then_a_plugged_card_is_used() {
        let cards = Cards::default();
        cards.0.lock().expect("cards").playback_only = vec!["vc4-hdmi-0 (vc4hdmi0)".into()];
        let opened = Arc::new(Mutex::new(Vec::new()));
        let mut a = auto(&cards, &opened);
        let e = a.open().expect_err("nothing to capture from");
        assert!(e.to_string().contains("playback only: vc4-hdmi-0"), "{e}");
        assert_eq!(a.device(), AUTO);
        assert_eq!(a.selection().card, None);
        assert!(a.selection().reason.starts_with("no sound card with a capture device"));

        cards.set(vec![usb(1, "Device")]);
        a.open().expect("the USB card");
        assert_eq!(a.device(), "plughw:CARD=Device,DEV=0");
        let sel = a.selection();
        assert!(sel.auto);
        assert_eq!(sel.card.as_deref(), Some("Device"));
        assert_eq!(sel.reason, "USB, the only card with capture (Device USB)");
        let mut buf = [0u8; 64];
        assert!(a.read(&mut buf, Duration::ZERO).is_ok());
    }

    #[test]
    fn a_card_back_under_a_new_index_is_reopened_by_name_and_a_new_card_gets_a_new_source() {
        let cards = Cards::default();
        cards.set(vec![usb(1, "Device")]);
        let opened = Arc::new(Mutex::new(Vec::new()));
        let mut a = auto(&cards, &opened);
        a.open().expect("open");
        cards.set(vec![]);
        assert!(a.open().is_err(), "unplugged");
        cards.set(vec![usb(5, "Device")]);
        a.open().expect("back");
        assert_eq!(a.device(), "plughw:CARD=Device,DEV=0");
        cards.set(vec![usb(2, "CODEC")]);
        a.open().expect("another card");
        assert_eq!(a.device(), "plughw:CARD=CODEC,DEV=0");
        assert_eq!(
            *opened.lock().expect("opened"),
            [
                "plughw:CARD=Device,DEV=0",
                "plughw:CARD=Device,DEV=0",
                "plughw:CARD=CODEC,DEV=0"
            ]
        );
    }
}
