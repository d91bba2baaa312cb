"""Association negotiation as the acceptor: read an A-ASSOCIATE-RQ, answer an A-ASSOCIATE-AC.

pynetdicom's PDU classes read and write the two PDUs, and its ``negotiate_as_acceptor`` decides
each presentation context (abstract syntax supported, first transfer syntax the node supports,
SCP/SCU roles). This runs once per association; the data phase (:mod:`node.ingest.association`)
does not touch pynetdicom.

The node accepts every storage SOP class with every transfer syntax pynetdicom knows, and
Verification. It announces no PDU size limit (0) and answers an asynchronous operations window
proposal with 1/1 (one operation at a time), as pynetdicom does; other extended negotiation
(user identity, SOP class extended) is ignored, which PS3.7 allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
)
from pynetdicom import pdu as pdus
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor

from node.ingest.wire import ProtocolError

__all__ = ["VERIFICATION", "Negotiated", "accept", "read_request"]

VERIFICATION = "1.2.840.10008.1.1"
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

#: What the node supports, by abstract syntax (looked up per proposed context).
_SUPPORTED: dict[str, PresentationContext] = {
    VERIFICATION: build_context(VERIFICATION, ALL_TRANSFER_SYNTAXES),
    **{
        str(context.abstract_syntax): build_context(
            str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES
        )
        for context in AllStoragePresentationContexts
        if context.abstract_syntax is not None
    },
}


def read_request(pdu: bytes) -> A_ASSOCIATE:
    """The A-ASSOCIATE request primitive of a whole A-ASSOCIATE-RQ PDU (header included).

    Raises
    ------
    ProtocolError
        If the PDU cannot be read.
    """
    try:
        request = pdus.A_ASSOCIATE_RQ()
        request.decode(pdu)
        return request.to_primitive()
    except Exception as exc:  # pynetdicom raises many kinds on malformed items
        raise ProtocolError(f"unreadable A-ASSOCIATE-RQ ({type(exc).__name__})", 0x06) from exc


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The answer to an association request."""

    #: The A-ASSOCIATE-AC PDU to send.
    pdu: bytes
    #: Accepted presentation contexts: context ID -> (abstract syntax, transfer syntax).
    accepted: dict[int, tuple[str, str]]
    #: The proposed contexts that were not accepted (their ``result`` says why).
    rejected: list[PresentationContext]
    #: The largest PDU the peer accepts (0: no limit).
    peer_max_pdu: int


def accept(request: A_ASSOCIATE, *, max_pdu_length: int = 0) -> Negotiated:
    """Negotiate the proposed presentation contexts and build the A-ASSOCIATE-AC.

    Raises
    ------
    ProtocolError
        If the request's items are inconsistent enough that no answer can be encoded.
    """
    proposed = list(request.presentation_context_definition_list)
    supported = [
        _SUPPORTED[str(context.abstract_syntax)]
        for context in proposed
        if str(context.abstract_syntax) in _SUPPORTED
    ]
    roles: dict[str, tuple[bool | None, bool | None]] = {}
    asynchronous = False
    for item in request.user_information:
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
            roles[str(item.sop_class_uid)] = (item.scu_role, item.scp_role)
        elif isinstance(item, AsynchronousOperationsWindowNegotiation):
            asynchronous = True
    try:
        result, role_items = negotiate_as_acceptor(proposed, supported, roles or None)  # type: ignore[arg-type]
        answer = A_ASSOCIATE()
        answer.application_context_name = _APPLICATION_CONTEXT
        answer.calling_ae_title = request.calling_ae_title
        answer.called_ae_title = request.called_ae_title
        answer.result = 0x00
        answer.result_source = 0x01
        answer.presentation_context_definition_results_list = result
        information: list[object] = []
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = max_pdu_length
        information.append(maximum)
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        information.append(implementation)
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        information.append(version)
        information.extend(role_items)
        if asynchronous:
            window = AsynchronousOperationsWindowNegotiation()
            window.maximum_number_operations_invoked = 1
            window.maximum_number_operations_performed = 1
            information.append(window)
        answer.user_information = information  # type: ignore[assignment]
        pdu = pdus.A_ASSOCIATE_AC()
        pdu.from_primitive(answer)
        encoded = pdu.encode()
    except Exception as exc:
        raise ProtocolError(f"cannot answer the request ({type(exc).__name__})", 0x06) from exc
    accepted = {
        int(context.context_id): (str(context.abstract_syntax), str(context.transfer_syntax[0]))
        for context in result
        if context.result == 0x00 and context.context_id is not None
    }
    return Negotiated(
        pdu=encoded,
        accepted=accepted,
        rejected=[context for context in result if context.result != 0x00],
        peer_max_pdu=int(request.maximum_length_received or 0),
    )
