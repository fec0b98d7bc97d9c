//! Capability grants (KIBITZ.md §4.8): what a room member may perceive and do.
//!
//! A [`Grant`] travels in the authority's `{k:"caps", grants:{voiceId: Grant}}` mesh envelope
//! and in a manifest's `agentKeys[].caps`. Anything read off the wire goes through
//! [`sanitize_grant`] first: unknown strings are dropped, duplicates removed, `backend` clamped
//! to 80 characters, `egress` kept only when `true`. Lists are kept in the canonical order of
//! [`Perceive::ALL`] and [`Act::ALL`], so equal grants compare and encode equal on every peer.
//! Expiry is checked against a `now` the caller passes in (unix seconds).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::presence::Meta;

/// Longest `backend` disclosure kept, in characters.
pub const MAX_BACKEND_CHARS: usize = 80;

/// What a member may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Perceive {
    /// The screen-share video lane.
    SeeScreen,
    /// Microphone and share audio.
    HearAudio,
    /// Chat text.
    ReadChat,
    /// The roster.
    ReadRoster,
    /// Direct messages.
    ReceiveDirected,
    /// Images.
    ReadMedia,
    /// Files.
    ReadFiles,
}

impl Perceive {
    /// Every perceive capability, in canonical order.
    pub const ALL: [Self; 7] = [
        Self::SeeScreen,
        Self::HearAudio,
        Self::ReadChat,
        Self::ReadRoster,
        Self::ReceiveDirected,
        Self::ReadMedia,
        Self::ReadFiles,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeeScreen => "see-screen",
            Self::HearAudio => "hear-audio",
            Self::ReadChat => "read-chat",
            Self::ReadRoster => "read-roster",
            Self::ReceiveDirected => "receive-directed",
            Self::ReadMedia => "read-media",
            Self::ReadFiles => "read-files",
        }
    }

    /// Reads a wire name; `None` for anything unknown.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What a member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Act {
    /// Send chat and other content.
    SendChat,
    /// Publish audio.
    Speak,
    /// Take app actions.
    Act,
}

impl Act {
    /// Every act capability, in canonical order.
    pub const ALL: [Self; 3] = [Self::SendChat, Self::Speak, Self::Act];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendChat => "send-chat",
            Self::Speak => "speak",
            Self::Act => "act",
        }
    }

    /// Reads a wire name; `None` for anything unknown.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A capability grant: `{perceive, act, backend?, egress?, expiresAt?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// What the member may receive.
    #[serde(default)]
    pub perceive: Vec<Perceive>,
    /// What the member may do.
    #[serde(default)]
    pub act: Vec<Act>,
    /// A disclosed model backend (≤ 80 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Disclosed egress: only ever `Some(true)` after sanitising.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
    /// Expiry, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Grant {
    /// Everything (a human's default, and always one's own).
    pub fn full() -> Self {
        Self {
            perceive: Perceive::ALL.to_vec(),
            act: Act::ALL.to_vec(),
            ..Self::default()
        }
    }

    /// Nothing at all (what an expired grant becomes).
    pub fn empty() -> Self {
        Self::default()
    }

    /// An agent's default: perceive `read-chat read-roster receive-directed`, act nothing.
    pub fn agent_default() -> Self {
        Self {
            perceive: vec![
                Perceive::ReadChat,
                Perceive::ReadRoster,
                Perceive::ReceiveDirected,
            ],
            act: Vec::new(),
            ..Self::default()
        }
    }

    /// Whether `expiresAt` has passed at `now_unix` (expiry is exclusive: valid while `now < expiresAt`).
    pub fn is_expired(&self, now_unix: u64) -> bool {
        self.expires_at.is_some_and(|at| now_unix >= at)
    }

    /// This grant, or the empty grant once it has expired.
    pub fn at(&self, now_unix: u64) -> Self {
        if self.is_expired(now_unix) {
            Self::empty()
        } else {
            self.clone()
        }
    }

    /// Whether the grant lets its holder receive `p`.
    pub fn perceives(&self, p: Perceive) -> bool {
        self.perceive.contains(&p)
    }

    /// Whether the grant lets its holder do `a`.
    pub fn may(&self, a: Act) -> bool {
        self.act.contains(&a)
    }

    /// The same grant after [`sanitize_grant`]'s canonicalisation (order, dedupe, clamps).
    pub fn canonical(&self) -> Self {
        let mut g = self.clone();
        g.perceive = Perceive::ALL
            .into_iter()
            .filter(|p| self.perceive.contains(p))
            .collect();
        g.act = Act::ALL
            .into_iter()
            .filter(|a| self.act.contains(a))
            .collect();
        g.backend = clamp_backend(self.backend.as_deref());
        g.egress = (self.egress == Some(true)).then_some(true);
        g
    }
}

fn clamp_backend(backend: Option<&str>) -> Option<String> {
    let b = backend?.trim();
    (!b.is_empty()).then(|| b.chars().take(MAX_BACKEND_CHARS).collect())
}

/// Reads a grant from any JSON value, the way receivers must: `None` unless it is an object;
/// non-string and unknown entries of `perceive`/`act` are dropped and duplicates removed;
/// a non-string or empty `backend` is dropped and a long one cut to 80 characters; `egress`
/// is kept only when `true`; `expiresAt` only when a finite non-negative number (floored).
pub fn sanitize_grant(raw: &Value) -> Option<Grant> {
    let obj = raw.as_object()?;
    let strings = |key: &str| -> Vec<&str> {
        obj.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let perceive = strings("perceive");
    let act = strings("act");
    let expires_at = obj
        .get("expiresAt")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite() && *t >= 0.0)
        // Saturating float-to-int cast: absurdly large expiries become u64::MAX.
        .map(|t| t.floor() as u64);
    Some(Grant {
        perceive: Perceive::ALL
            .into_iter()
            .filter(|p| perceive.contains(&p.as_str()))
            .collect(),
        act: Act::ALL
            .into_iter()
            .filter(|a| act.contains(&a.as_str()))
            .collect(),
        backend: clamp_backend(obj.get("backend").and_then(Value::as_str)),
        egress: (obj.get("egress") == Some(&Value::Bool(true))).then_some(true),
        expires_at,
    })
}

/// The grant both sides consent to: capabilities in both, the earlier expiry, `egress` if
/// either discloses it, and `a`'s backend disclosure (else `b`'s).
pub fn intersect_grant(a: &Grant, b: &Grant) -> Grant {
    Grant {
        perceive: Perceive::ALL
            .into_iter()
            .filter(|p| a.perceives(*p) && b.perceives(*p))
            .collect(),
        act: Act::ALL
            .into_iter()
            .filter(|x| a.may(*x) && b.may(*x))
            .collect(),
        backend: clamp_backend(a.backend.as_deref().or(b.backend.as_deref())),
        egress: (a.egress == Some(true) || b.egress == Some(true)).then_some(true),
        expires_at: match (a.expires_at, b.expires_at) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        },
    }
}

/// Who a grant is being worked out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This peer itself: always full.
    SelfPeer,
    /// A member whose meta says `role: "agent"`.
    Agent,
    /// Anyone else.
    Human,
}

impl Role {
    /// The role of a roster member from its announced meta (`role: "agent"` makes an agent).
    pub fn of(meta: Option<&Meta>, is_self: bool) -> Self {
        if is_self {
            Self::SelfPeer
        } else if meta.is_some_and(Meta::is_agent) {
            Self::Agent
        } else {
            Self::Human
        }
    }
}

/// [`default_grant`] for a roster member, with an agent's `backend`/`egress` from its meta.
pub fn default_grant_for(meta: Option<&Meta>, is_self: bool) -> Grant {
    default_grant(
        Role::of(meta, is_self),
        meta.and_then(|m| m.backend.as_deref()),
        meta.is_some_and(Meta::discloses_egress),
    )
}

/// The grant a member has when nobody granted anything: full for self and humans, the agent
/// default for agents, with an agent's disclosed `backend`/`egress` (from its meta) attached.
pub fn default_grant(role: Role, backend: Option<&str>, egress: bool) -> Grant {
    match role {
        Role::SelfPeer | Role::Human => Grant::full(),
        Role::Agent => Grant {
            backend: clamp_backend(backend),
            egress: egress.then_some(true),
            ..Grant::agent_default()
        },
    }
}

/// The grant in force: self is always full; otherwise the explicit grant (if any) or the
/// role default, emptied once expired at `now_unix`.
pub fn effective_grant(
    role: Role,
    explicit: Option<&Grant>,
    backend: Option<&str>,
    egress: bool,
    now_unix: u64,
) -> Grant {
    if role == Role::SelfPeer {
        return Grant::full();
    }
    match explicit {
        Some(g) => g.at(now_unix),
        None => default_grant(role, backend, egress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grant_json_shape() {
        let g = Grant {
            perceive: vec![Perceive::ReadChat, Perceive::ReceiveDirected],
            act: vec![Act::SendChat],
            backend: Some("gpt".into()),
            egress: Some(true),
            expires_at: Some(1_700_000_000),
        };
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(
            v,
            json!({"perceive": ["read-chat", "receive-directed"], "act": ["send-chat"],
                   "backend": "gpt", "egress": true, "expiresAt": 1_700_000_000u64})
        );
        assert_eq!(serde_json::from_value::<Grant>(v).unwrap(), g);
        assert_eq!(
            serde_json::to_value(Grant::empty()).unwrap(),
            json!({"perceive": [], "act": []})
        );
    }

    #[test]
    fn sanitize_drops_dedupes_and_clamps() {
        let long = "b".repeat(200);
        let g = sanitize_grant(&json!({
            "perceive": ["read-roster", "read-chat", "read-chat", "fly", 7, null],
            "act": ["act", "send-chat", "teleport"],
            "backend": long, "egress": "yes", "expiresAt": 12.9, "extra": 1
        }))
        .unwrap();
        assert_eq!(g.perceive, [Perceive::ReadChat, Perceive::ReadRoster]);
        assert_eq!(g.act, [Act::SendChat, Act::Act]);
        assert_eq!(g.backend.as_deref().map(str::len), Some(80));
        assert_eq!(g.egress, None);
        assert_eq!(g.expires_at, Some(12));
        assert_eq!(sanitize_grant(&json!([1])), None);
        assert_eq!(sanitize_grant(&json!({})), Some(Grant::empty()));
        let g = sanitize_grant(
            &json!({"perceive": "read-chat", "egress": true, "expiresAt": -1, "backend": ""}),
        )
        .unwrap();
        assert_eq!(
            g,
            Grant {
                egress: Some(true),
                ..Grant::empty()
            }
        );
        assert_eq!(g.canonical(), g);
    }

    #[test]
    fn intersect_and_defaults() {
        let agent = default_grant(Role::Agent, Some(" claude "), true);
        assert_eq!(agent.perceive, Grant::agent_default().perceive);
        assert!(agent.act.is_empty());
        assert_eq!(agent.backend.as_deref(), Some("claude"));
        assert_eq!(agent.egress, Some(true));
        assert_eq!(default_grant(Role::Human, None, false), Grant::full());
        let meta: Meta =
            serde_json::from_value(json!({"role": "agent", "backend": "claude", "egress": true}))
                .unwrap();
        assert_eq!(default_grant_for(Some(&meta), false), agent);
        assert_eq!(default_grant_for(Some(&meta), true), Grant::full());
        assert_eq!(default_grant_for(None, false), Grant::full());
        let kibitzer: Meta = serde_json::from_value(json!({"role": "kibitzer"})).unwrap();
        assert_eq!(Role::of(Some(&kibitzer), false), Role::Human);

        let offer = Grant {
            perceive: vec![Perceive::ReadChat, Perceive::SeeScreen],
            act: vec![Act::SendChat],
            expires_at: Some(100),
            ..Grant::empty()
        };
        let consent = Grant {
            expires_at: Some(50),
            ..Grant::full()
        };
        let both = intersect_grant(&offer, &consent);
        assert_eq!(both.perceive, [Perceive::SeeScreen, Perceive::ReadChat]);
        assert_eq!(both.act, [Act::SendChat]);
        assert_eq!(both.expires_at, Some(50));
        assert_eq!(
            intersect_grant(&Grant::full(), &Grant::full()),
            Grant::full()
        );

        assert_eq!(
            effective_grant(Role::Agent, Some(&offer), None, false, 99),
            offer
        );
        assert_eq!(
            effective_grant(Role::Agent, Some(&offer), None, false, 100),
            Grant::empty()
        );
        assert_eq!(
            effective_grant(Role::SelfPeer, Some(&offer), None, false, 100),
            Grant::full()
        );
        assert_eq!(
            effective_grant(Role::Human, None, None, false, 100),
            Grant::full()
        );
    }
}
