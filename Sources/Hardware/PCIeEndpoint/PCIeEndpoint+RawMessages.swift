import Formats

// What a misbehaving device puts on the link beyond the misbehaviours it models itself
// (`Misbehaviour`): page request messages with any field, whatever it asked for before.
extension PCIeEndpoint {
    /// Sends a page request message (or stop marker) with the fields of `d`, except the
    /// requester ID, which the link fills in from the device's own (PCIe: the requester ID
    /// of a message is the function's; ACS source validation stops a spoofed one). The
    /// endpoint keeps no record of it: a response to it is an unexpected response.
    public func sendRawPageRequest(_ d: PageRequestDescriptor) {
        var message = d
        message.requester = requesterID
        sendPageRequest(message)
    }
}
