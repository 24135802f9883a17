// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Devices;

/// <summary>The device side of a console: a serial port (or any character device) that takes received bytes.</summary>
public interface IConsoleReceiver
{
    /// <summary>Offers received bytes; returns how many the device took (possibly 0 when its receive FIFO is full).
    /// A backend keeps the rest and offers them again after <see cref="IConsoleBackend.ReceiverHasRoom"/>.</summary>
    int Offer(ReadOnlySpan<byte> data);
}

/// <summary>
/// The host side of a console (bhyve's uart backend): where the guest's output goes and where its input comes from.
/// Output is buffered and cheap per byte; it reaches the host at a newline, when the buffer fills, a few milliseconds
/// after the last byte, on <see cref="Flush"/> and on <see cref="IDisposable.Dispose"/>.
/// Input is pulled only while the receiver has room, so a guest that does not read holds the host side back
/// (flow control) instead of losing bytes.
/// </summary>
public interface IConsoleBackend : IDisposable
{
    /// <summary>True when this backend can deliver input to the guest.</summary>
    bool HasInput { get; }

    /// <summary>Connects the device that receives input and starts delivering it. Called once, by the device.</summary>
    void Attach(IConsoleReceiver receiver);

    /// <summary>True while output would be dropped because the host side has not taken what is queued (a slow or stalled
    /// reader); a device with flow control (the UART's LSR) shows the guest a busy transmitter meanwhile.</summary>
    bool OutputFull => false;

    /// <summary>Queues one byte of guest output. Called on vCPU threads, possibly under the device's lock: never blocks on input.</summary>
    void Write(byte value);

    /// <summary>Pushes queued output to the host now.</summary>
    void Flush();

    /// <summary>Tells the backend the receiver has room again (the guest read its FIFO). Must be called outside the receiver's lock.</summary>
    void ReceiverHasRoom();
}
