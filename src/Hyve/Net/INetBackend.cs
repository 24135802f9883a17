// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Net;

/// <summary>
/// A host network backend for a NIC model (bhyve's net_backend): it sends the guest's Ethernet frames to the host and
/// queues the host's frames for the guest. A backend that understands the virtio-net header (a tap with IFF_VNET_HDR)
/// carries it in front of every frame both ways, so checksum and segmentation offloads pass through; one that does not
/// (slirp) takes and gives bare Ethernet frames and offers no offloads.
/// <para>
/// Threading: <see cref="Peek"/>, <see cref="Consume"/> and <see cref="Send"/> are called from the device's I/O thread
/// only. <see cref="ReceiveFd"/> becomes readable when frames are waiting (an eventfd the backend signals, or the tap
/// itself); the device drains it and then takes frames with <see cref="Peek"/> until it is empty or the guest has no room.
/// </para>
/// </summary>
public interface INetBackend : IDisposable
{
    /// <summary>What <c>-s</c> called it (tap0, slirp), for messages.</summary>
    string Name { get; }

    /// <summary>virtio-net feature bits for the offloads this backend can carry (0 for none).</summary>
    ulong OffloadFeatures { get; }

    /// <summary>True when frames both ways carry a virtio-net header of the length set by <see cref="Configure"/>.</summary>
    bool HasVnetHeader { get; }

    /// <summary>The fd the device watches for received frames (epoll, read side).</summary>
    int ReceiveFd { get; }

    /// <summary>True when <see cref="ReceiveFd"/> is an eventfd the device must drain; false for a tap fd (edge-triggered).</summary>
    bool ReceiveFdIsEventFd { get; }

    /// <summary>Called from the backend's own thread when <see cref="Send"/> refused a frame for lack of room and room is back.</summary>
    Action? SendRoom { get; set; }

    /// <summary>Applies what the guest negotiated: the header length (10 or 12) and the offload bits it accepted.</summary>
    void Configure(int vnetHeaderLength, ulong negotiatedFeatures);

    /// <summary>The next frame for the guest (with its virtio-net header when <see cref="HasVnetHeader"/>), or empty.
    /// It stays valid, and is returned again, until <see cref="Consume"/>.</summary>
    ReadOnlySpan<byte> Peek();

    /// <summary>Drops the frame <see cref="Peek"/> returned.</summary>
    void Consume();

    /// <summary>
    /// Sends one frame gathered from <paramref name="parts"/> (the guest's buffers; the first <paramref name="headerLength"/>
    /// bytes are its virtio-net header). Returns false only when the backend has no room now (the caller keeps the frame
    /// and retries after <see cref="SendRoom"/>); a frame the host refuses is dropped and counts as sent.
    /// </summary>
    bool Send(ReadOnlySpan<Hyve.Virtio.IoVec> parts, int headerLength);
}
