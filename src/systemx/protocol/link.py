"""What two exchanges say to each other about call legs, party lines and addresses.

Two exchanges are two nodes of one cluster, or two exchanges joined by a
federation trunk. Each message is a ``msgspec.Struct`` in one union tagged by
``"op"`` (:data:`LinkMessage`); :func:`encode` and :func:`decode` are pure
functions, bytes in and bytes out.

**A call that spans two exchanges is two legs** (back-to-back, B2BUA style).
Exchange 1 holds leg A, the caller's; exchange 2 holds leg B, the callee's.
Each exchange owns its leg's state and its local party, and the two legs agree
through these messages, every one of which names the call id::

    exchange 1 (caller a)                  exchange 2 (callee b)
    DIAL from a       -- LegDial -->        b free: RING b
    RINGING to a      <-- LegRing --        (LegRing waking=true first if b is asleep)
    CONNECTED to a    <-- LegAnswer --      ANSWER from b
    MSG from a        -- Deliver -->        frame sent as is to b's session
    MSG to a          <-- Deliver --        MSG from b
    HANGUP to b's leg -- LegHangup -->      HANGUP to b (or the other way round)
    BUSY to a         <-- LegBusy --        b occupied, absent, dnd, ...: instead of LegRing

* The answer path is the way the dial came: an exchange answers a
  :class:`LegDial` to the exchange it came from, ``via[-1]``. An exchange that
  sends a dial on (the address moved, or only a trunk reaches it) holds both
  legs and relays between them, as any B2BUA does.
* :class:`LegDial` carries the caller's session id and :class:`LegAnswer` the
  answering session's id, so that once the call is connected each side can
  address the other's session directly with :class:`Deliver`.
* **Relayed frames bypass the receiving core.** For MSG (and PARTY_MSG through
  :class:`PartyDeliver`) the sender's exchange builds the final client frame,
  ``from`` included, so a far end cannot spoof it; the receiving exchange only
  looks up the local session and sends the frame unchanged. ``frame`` is kept
  as :class:`msgspec.Raw` on decode and spliced unchecked on encode, so it is
  never re-serialised. :func:`deliver_prefix` is the bytes before the frame,
  for a sender that splices envelopes itself.
* Leg control messages (``LegDial`` to ``LegBusy``) enter the receiving core as
  events.

**Loops.** ``via`` lists the exchanges a dial passed through, the one that
placed it first; ``hops`` counts the times it was sent on. :func:`forwarded`
is the only way to send a dial on: it refuses (returns ``None``) when the next
exchange is already in ``via`` (a loop) or when ``hops`` reached
:data:`MAX_HOPS`. ``hops`` is kept beside ``via`` because a dial may cross an
exchange that cannot carry ``via`` (a trunk to a peer that speaks only client
frames); a translator that knows the count keeps the path bounded all the same.

**Validation.** :func:`decode` checks types and bounds (ids and reasons at most
256 characters, addresses at most 254, ``hops`` within ``0..MAX_HOPS``, ``via``
at most ``MAX_HOPS + 1`` ids) and raises :class:`InvalidLinkMessage` for
anything else, including an unknown ``op``. It does not check the address
grammar: the receiving core does, as it does for a client's DIAL. Unknown
fields are ignored, so a newer exchange can add fields an older one skips.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Raw, field

from systemx.protocol.address import MAX_ADDRESS_LENGTH

__all__ = [
    "MAX_HOPS",
    "Deliver",
    "Gone",
    "InvalidLinkMessage",
    "LegAnswer",
    "LegBusy",
    "LegDial",
    "LegHangup",
    "LegMessage",
    "LegRing",
    "LinkDown",
    "LinkMessage",
    "LinkUp",
    "PartyDeliver",
    "PartyJoin",
    "PartyLeave",
    "ProfileSet",
    "Slept",
    "WakeEnded",
    "Woken",
    "decode",
    "deliver_prefix",
    "encode",
    "forwarded",
    "party_deliver_prefix",
]

#: The most times one dial may be sent on from exchange to exchange.
MAX_HOPS = 8

Id = Annotated[str, Meta(min_length=1, max_length=256)]
Address = Annotated[str, Meta(min_length=1, max_length=MAX_ADDRESS_LENGTH)]
Reason = Annotated[str, Meta(max_length=256)]
Hops = Annotated[int, Meta(ge=0, le=MAX_HOPS)]
Via = Annotated[list[Id], Meta(min_length=1, max_length=MAX_HOPS + 1)]


class _Op(msgspec.Struct, tag_field="op", omit_defaults=True):
    """Base of every link message; the subclass's ``tag`` is its ``op``."""


# --------------------------------------------------------------------------
# Call legs


class LegDial(_Op, tag="dial"):
    """Place the far leg of ``call_id``: ``caller`` dialled ``to``.

    ``caller_session`` is the caller's session on the exchange that placed the
    call (``via[0]``), the target of the callee side's :class:`Deliver`.
    ``wake``: the receiving exchange may wake a sleeping ``to`` to take the
    call; when false it answers :class:`LegBusy` for an asleep address, as a
    federation child does.
    """

    call_id: Id
    caller: Address
    caller_session: Id
    to: Address
    via: Via
    hops: Hops = 0
    metadata: dict[str, Any] | None = None
    wake: bool = False


class LegRing(_Op, tag="ring"):
    """The callee side rings ``call_id``; ``waking``: its callee is being woken first.

    Sent once with ``waking=True`` when a wake starts and again with
    ``waking=False`` when the woken callee is rung, or once when it rings at once.
    """

    call_id: Id
    waking: bool = False


class LegAnswer(_Op, tag="answer"):
    """The callee answered ``call_id``; ``session`` is its session, for :class:`Deliver`."""

    call_id: Id
    session: Id
    # The answering address, when it is not the dialled one as written.
    from_: Address | None = field(default=None, name="from")


class LegHangup(_Op, tag="hangup"):
    """The sender's side of ``call_id`` ended with ``reason``.

    ``from`` names the party that left when the call goes on without it (a
    broadcast listener); absent, the whole call is over.
    """

    call_id: Id
    reason: Reason
    from_: Address | None = field(default=None, name="from")


class LegBusy(_Op, tag="busy"):
    """The callee side refuses ``call_id`` (instead of ringing): ``reason`` is BUSY's reason."""

    call_id: Id
    to: Address
    reason: Reason


# --------------------------------------------------------------------------
# Relayed frames


class Deliver(_Op, tag="deliver", gc=False):
    """Send ``frame``, a final client frame, unchanged to the local session ``session``."""

    session: Id
    frame: Raw


class PartyDeliver(_Op, tag="party", gc=False):
    """Send ``frame`` to every local member of party line ``party`` not in ``exclude``.

    ``party`` is the line's key; ``exclude`` holds member ids (the sender's,
    which already has its echo or none).
    """

    party: Id
    exclude: list[Id]
    frame: Raw


class PartyJoin(_Op, tag="party_join"):
    """Member ``member`` (``address``, on the sending node) joined line ``party`` (its key) as number ``seq``.

    Sent by the member's node to every other node that held members of the
    line when it joined; ``seq`` (from the roster) tells the receiver which of
    its members heard of it already, in their JOINED.
    """

    party: Id
    member: Id
    address: Address
    seq: Annotated[int, Meta(ge=0)]


class PartyLeave(_Op, tag="party_leave"):
    """Member ``member`` left line ``party`` (its key) as number ``seq``, for ``reason`` (PARTY_LEFT's)."""

    party: Id
    member: Id
    address: Address
    reason: Reason
    seq: Annotated[int, Meta(ge=0)]


# --------------------------------------------------------------------------
# Addresses and links


class Gone(_Op, tag="gone"):
    """Session ``session`` no longer holds address key ``key``: forget routes to it.

    Naming the session keeps a late ``Gone`` from removing a newer holder.
    """

    key: Address
    session: Id


class LinkUp(_Op, tag="up"):
    """Exchange ``node`` started at ``started_at`` (epoch seconds).

    A peer that sees a later ``started_at`` than it knew ends every leg it had
    with the earlier run: that run's calls are gone with it.
    """

    node: Id
    started_at: float


class LinkDown(_Op, tag="down"):
    """Exchange ``node`` is stopping (``reason``): end every leg with it now.

    A link that drops without this message is reported by the driver as the
    same event, after its own timeout.
    """

    node: Id
    reason: Reason


# --------------------------------------------------------------------------
# Wake-on-ring across the nodes of a cluster


class ProfileSet(_Op, tag="profile"):
    """The wake profile of address key ``key`` is now ``profile`` (its stored JSON form);
    ``None``: the address has no profile any more."""

    key: Address
    profile: dict[str, Any] | None = None


class Woken(_Op, tag="woken"):
    """``address``, which has a wake profile, is registered on the sending node: the calls
    held for it elsewhere go there, and a wake under way for it is over."""

    address: Address


class Slept(_Op, tag="slept"):
    """``address``, which has a wake profile, went to sleep on the sending node: it is shown
    asleep everywhere again."""

    address: Address


class WakeEnded(_Op, tag="wakefail"):
    """The wake of ``address`` that the sending node ran failed (``reason`` is BUSY's reason,
    ``wake_failed``): every node answers the calls it holds for ``address`` the same way."""

    address: Address
    reason: Reason
    detail: Reason = ""


LegMessage = LegDial | LegRing | LegAnswer | LegHangup | LegBusy
"""The messages that enter the receiving core as events."""

LinkMessage = (
    LegDial
    | LegRing
    | LegAnswer
    | LegHangup
    | LegBusy
    | Deliver
    | PartyDeliver
    | PartyJoin
    | PartyLeave
    | Gone
    | LinkUp
    | LinkDown
    | ProfileSet
    | Woken
    | Slept
    | WakeEnded
)


class InvalidLinkMessage(ValueError):
    """Bytes that are not a valid link message; ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid link message: {detail}")
        self.detail = detail


_decoder = msgspec.json.Decoder(LinkMessage)
_encoder = msgspec.json.Encoder()

#: Encode one link message to bytes.
encode = _encoder.encode


def decode(data: bytes) -> LinkMessage:
    """Decode and validate one link message; raise :class:`InvalidLinkMessage` if it is not one."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidLinkMessage(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidLinkMessage(f"not JSON: {exc}") from exc


def deliver_prefix(session: str) -> bytes:
    """The bytes of a :class:`Deliver` to ``session`` before its frame; close with ``b"}"``.

    ``deliver_prefix(s) + frame + b"}" == encode(Deliver(s, Raw(frame)))``, so a
    relay can build it once per route and splice each frame, as the local MSG
    relay does with its prefix.
    """
    return b'{"op":"deliver","session":' + _encoder.encode(session) + b',"frame":'


def party_deliver_prefix(party: str) -> bytes:
    """The bytes of a :class:`PartyDeliver` of line ``party`` before its frame; close with ``b"}"``."""
    return b'{"op":"party","party":' + _encoder.encode(party) + b',"exclude":[],"frame":'


def forwarded(dial: LegDial, via_id: str) -> LegDial | None:
    """``dial`` as ``via_id`` sends it on, or ``None`` when it must not go on.

    ``None`` when ``via_id`` already handled this dial (a loop) or when the
    dial was already sent on :data:`MAX_HOPS` times; the exchange then answers
    :class:`LegBusy` itself.
    """
    if dial.hops >= MAX_HOPS or via_id in dial.via:
        return None
    return msgspec.structs.replace(dial, hops=dial.hops + 1, via=[*dial.via, via_id])
