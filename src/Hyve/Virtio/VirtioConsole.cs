// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Config;
using Hyve.Devices;
using Hyve.Pci;

namespace Hyve.Virtio;

/// <summary>
/// virtio-console (virtio 1.2 section 5.3) with one port, which Linux makes <c>/dev/hvc0</c> (so <c>console=hvc0</c>
/// works): receive queue 0, transmit queue 1, and VIRTIO_CONSOLE_F_EMERG_WRITE (a byte written to <c>emerg_wr</c> goes
/// straight out, as early console output does). The port's backend is any console backend
/// (<see cref="ConsoleBackends"/>): <c>-s N,virtio-console,NAME=PATH</c> as bhyve writes it, PATH being <c>stdio</c>, a
/// UNIX socket (bhyve's kind: hyve listens on a new one), a tty or a file; with no port, stdio.
/// Input is taken only while the guest has receive buffers posted (flow control back to the backend).
/// bhyve's MULTIPORT (several named ports and the control queues) is not implemented: a second port is refused.
/// </summary>
public sealed class VirtioConsole : VirtioPciDevice, IConsoleReceiver
{
    /// <summary>Virtio device type 3.</summary>
    public const int Type = 3;
    /// <summary>VIRTIO_CONSOLE_F_EMERG_WRITE.</summary>
    public const ulong FeatureEmergWrite = 1ul << 2;
    private readonly IConsoleBackend _backend;
    private int _roomFd = -1;

    private VirtioConsole(PciDeviceContext ctx, IConsoleBackend backend)
        : base(ctx, Type, 0x1003, 0x07, 0x80, queues: 2, queueSize: 64, deviceFeatures: FeatureEmergWrite, configSize: 12)
    {
        _backend = backend;
        DeviceConfig[4] = 1; // max_nr_ports (only meaningful with MULTIPORT)
        StartIo();
        _backend.Attach(this);
    }

    /// <summary>The port's name (the NAME of NAME=PATH), or null.</summary>
    public string? PortName { get; private init; }

    /// <summary>Factory for <c>virtio-console</c>.</summary>
    public static PciDevice Create(PciDeviceContext ctx)
    {
        // Ports are nodes under the device (port.N.name, port.N.path), so they come from the tree, not the flat conf.
        string? Port(int n, string key) => ctx.Root?.Get($"{ctx.Where}.port.{n}.{key}");
        if (Port(1, "path") is not null)
            throw new HostConfigException($"{ctx.Where} virtio-console: hyve's virtio-console has one port (no MULTIPORT yet)");
        string path = Port(0, "path") ?? "stdio";
        IConsoleBackend backend;
        try { backend = ConsoleBackends.Create(path); }
        catch (ConfigException e) { throw new HostConfigException($"{ctx.Where} virtio-console: {e.Message}"); }
        try { return new VirtioConsole(ctx, backend) { PortName = Port(0, "name") }; }
        catch { backend.Dispose(); throw; }
    }

    /// <inheritdoc/>
    protected override void AddIoSources(VirtioIoThread io) =>
        // The guest posted receive buffers: tell the backend outside the transport lock (its contract).
        _roomFd = io.AddEventFd(_backend.ReceiverHasRoom);

    /// <inheritdoc/>
    protected override void OnQueueNotify(Virtqueue queue)
    {
        if (queue.Index == 0)
        {
            if (_roomFd >= 0) VirtioNative.Signal(_roomFd);
            return;
        }
        DrainQueue(queue);
        _backend.Flush();
    }

    /// <inheritdoc/>
    protected override uint HandleChain(Virtqueue queue, DescriptorChain chain)
    {
        // Transmit: every device-readable byte goes to the backend.
        for (int i = 0; i < chain.FirstWritable; i++)
        {
            if (!chain.TryGetSpan(i, out var span)) break;
            foreach (byte b in span) _backend.Write(b);
        }
        return 0;
    }

    /// <inheritdoc/>
    protected override void OnDeviceConfigWrite(int offset, int size, ulong value)
    {
        if (offset == 8 && (DriverFeatures & FeatureEmergWrite) != 0) _backend.Write((byte)value);
    }

    /// <summary>Input from the backend: fills posted receive buffers; returns the bytes taken.</summary>
    public int Offer(ReadOnlySpan<byte> data)
    {
        if (!TryEnterRunning()) return 0;
        var rx = Queues[0];
        int taken = 0;
        ushort old = rx.UsedIdx;
        try
        {
            while (taken < data.Length && rx.Enabled)
            {
                var r = rx.Pop();
                if (r == PopResult.Broken) { QueueBroken(rx); break; }
                if (r == PopResult.Empty) break;
                int n = rx.Chain.WriteWritable(0, data[taken..]);
                taken += n;
                if (!rx.Push(rx.Chain.Head, (uint)n)) { QueueBroken(rx); break; }
            }
            if (rx.NeedsInterrupt(old)) InterruptQueue(rx);
        }
        finally { ExitRunning(); }
        return taken;
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        base.Dispose();
        _backend.Dispose();
    }
}
