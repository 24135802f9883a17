// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Config;
using Hyve.Devices;
using Hyve.Pci;

namespace Hyve.Virtio;

/// <summary>
/// virtio-console (virtio 1.2 section 5.3): <c>-s N,virtio-console,NAME=PATH[,NAME=PATH...]</c> as bhyve writes it, each
/// PATH being <c>stdio</c>, a UNIX socket (bhyve's kind: hyve listens on a new one), a tty or a file; with no port, one
/// port on stdio. The first port is a console, which Linux makes <c>/dev/hvc0</c> (so <c>console=hvc0</c> works).
/// With more than one port the device offers VIRTIO_CONSOLE_F_MULTIPORT (bhyve's multiport device): the control
/// queues announce every port, port 0 as the console and the others as named serial ports (Linux's
/// <c>/dev/vportNpM</c>, whose <c>/sys/class/virtio-ports/*/name</c> is the NAME; udev links
/// <c>/dev/virtio-ports/NAME</c>). A single port keeps the two-queue layout without MULTIPORT, so older drivers and
/// snapshots see the device they always saw. VIRTIO_CONSOLE_F_EMERG_WRITE sends a byte written to <c>emerg_wr</c>
/// straight to port 0, as early console output does.
/// Input is taken only while the guest has receive buffers posted (flow control back to the backend). Every port is
/// announced open from the host side: output with no peer behind a socket is dropped, as on a serial line.
/// </summary>
public sealed class VirtioConsole : VirtioPciDevice
{
    /// <summary>Virtio device type 3.</summary>
    public const int Type = 3;
    /// <summary>VIRTIO_CONSOLE_F_MULTIPORT.</summary>
    public const ulong FeatureMultiport = 1ul << 1;
    /// <summary>VIRTIO_CONSOLE_F_EMERG_WRITE.</summary>
    public const ulong FeatureEmergWrite = 1ul << 2;
    /// <summary>Most ports one device takes (bhyve's VTCON_MAXPORTS).</summary>
    public const int MaxPorts = 16;
    /// <summary>Longest port name accepted.</summary>
    public const int MaxNameLength = 127;

    /// <summary>Control events (virtio 1.2 section 5.3.6.2.1).</summary>
    public const ushort EventDeviceReady = 0, EventDeviceAdd = 1, EventDeviceRemove = 2, EventPortReady = 3,
        EventConsolePort = 4, EventResize = 5, EventPortOpen = 6, EventPortName = 7;
    /// <summary>The control receive queue (device to driver) and control transmit queue (driver to device).</summary>
    public const int ControlRxQueue = 2, ControlTxQueue = 3;
    // A driver that keeps asking without posting control buffers cannot grow the backlog past this.
    private const int MaxPendingControl = 8 * MaxPorts;
    private const int ControlHeader = 8; // le32 id, le16 event, le16 value

    private readonly Port[] _ports;
    private readonly Queue<byte[]> _control = new();

    private VirtioConsole(PciDeviceContext ctx, Port[] ports)
        : base(ctx, Type, 0x1003, 0x07, 0x80, queues: ports.Length == 1 ? 2 : 2 * ports.Length + 2, queueSize: 64,
            deviceFeatures: FeatureEmergWrite | (ports.Length > 1 ? FeatureMultiport : 0), configSize: 12)
    {
        _ports = ports;
        foreach (var p in ports) p.Device = this;
        BinaryPrimitives.WriteUInt32LittleEndian(DeviceConfig.AsSpan(4), (uint)ports.Length); // max_nr_ports
        StartIo();
        foreach (var p in ports) p.Backend.Attach(p);
    }

    /// <summary>True when the device offers more than one port (VIRTIO_CONSOLE_F_MULTIPORT).</summary>
    public bool Multiport => _ports.Length > 1;
    /// <summary>The number of ports.</summary>
    public int PortCount => _ports.Length;
    /// <summary>Port <paramref name="id"/>'s name (the NAME of NAME=PATH), or null.</summary>
    public string? PortName(int id) => _ports[id].Name;
    /// <summary>True once the driver has opened port <paramref name="id"/> (VIRTIO_CONSOLE_PORT_OPEN 1 from the guest).</summary>
    public bool GuestOpened(int id) { lock (_ports) return _ports[id].GuestOpen; }

    /// <summary>Factory for <c>virtio-console</c>.</summary>
    public static PciDevice Create(PciDeviceContext ctx)
    {
        // Ports are nodes under the device (port.N.name, port.N.path), so they come from the tree, not the flat conf.
        string? Get(int n, string key) => ctx.Root?.Get($"{ctx.Where}.port.{n}.{key}");
        int count = 0;
        while (Get(count, "path") is not null) count++;
        if (count > MaxPorts) throw new HostConfigException($"{ctx.Where} virtio-console: {count} ports; at most {MaxPorts}");
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++)
        {
            string name = Get(i, "name") ?? "";
            if (name.Length > MaxNameLength || name.Any(c => c <= ' ' || c > '~'))
                throw new HostConfigException($"{ctx.Where} virtio-console: port name \"{name}\" (want up to {MaxNameLength} printable characters)");
            if (!names.Add(name)) throw new HostConfigException($"{ctx.Where} virtio-console: port name \"{name}\" given twice");
        }
        var ports = new Port[Math.Max(count, 1)];
        try
        {
            for (int i = 0; i < ports.Length; i++)
            {
                string path = Get(i, "path") ?? "stdio";
                IConsoleBackend backend;
                try { backend = ConsoleBackends.Create(path); }
                catch (ConfigException e) { throw new HostConfigException($"{ctx.Where} virtio-console: {e.Message}"); }
                ports[i] = new Port(i, Get(i, "name"), backend);
            }
            return new VirtioConsole(ctx, ports);
        }
        catch
        {
            foreach (var p in ports) p?.Backend.Dispose();
            throw;
        }
    }

    // Queue layout (5.3.2): port 0 receive/transmit are queues 0 and 1, the control pair 2 and 3, port n 2n+2 and 2n+3.
    private static int PortOfQueue(int q) => q < 2 ? 0 : q / 2 - 1;
    private static bool IsReceive(int q) => (q & 1) == 0 && q != ControlRxQueue;
    private static int ReceiveQueue(int port) => port == 0 ? 0 : 2 * port + 2;

    /// <inheritdoc/>
    protected override void AddIoSources(VirtioIoThread io)
    {
        // The guest posted receive buffers: tell the backend outside the transport lock (its contract).
        foreach (var p in _ports) p.RoomFd = io.AddEventFd(p.Backend.ReceiverHasRoom);
    }

    /// <inheritdoc/>
    protected override void OnQueueNotify(Virtqueue queue)
    {
        int q = queue.Index;
        if (Multiport && q == ControlRxQueue)
        {
            FlushControl();
            return;
        }
        if (IsReceive(q))
        {
            if (_ports[PortOfQueue(q)].RoomFd >= 0) VirtioNative.Signal(_ports[PortOfQueue(q)].RoomFd);
            return;
        }
        DrainQueue(queue);
        if (q == ControlTxQueue && Multiport) FlushControl();
        else _ports[PortOfQueue(q)].Backend.Flush();
    }

    /// <inheritdoc/>
    protected override uint HandleChain(Virtqueue queue, DescriptorChain chain)
    {
        if (Multiport && queue.Index == ControlTxQueue)
        {
            Span<byte> msg = stackalloc byte[ControlHeader];
            if (chain.ReadReadable(0, msg) == ControlHeader) OnControl(msg);
            return 0;
        }
        // Transmit: every device-readable byte goes to the port's backend.
        var backend = _ports[PortOfQueue(queue.Index)].Backend;
        for (int i = 0; i < chain.FirstWritable; i++)
        {
            if (!chain.TryGetSpan(i, out var span)) break;
            foreach (byte b in span) backend.Write(b);
        }
        return 0;
    }

    // A message from the driver (5.3.6.2). An id past the ports, an unknown event or a short message is ignored.
    private void OnControl(ReadOnlySpan<byte> msg)
    {
        uint id = BinaryPrimitives.ReadUInt32LittleEndian(msg);
        ushort ev = BinaryPrimitives.ReadUInt16LittleEndian(msg[4..]), value = BinaryPrimitives.ReadUInt16LittleEndian(msg[6..]);
        switch (ev)
        {
            case EventDeviceReady when value == 1:
                for (int i = 0; i < _ports.Length; i++) SendControl(i, EventDeviceAdd, 1);
                break;
            case EventPortReady when id < (uint)_ports.Length && value == 1:
                var port = _ports[id];
                lock (_ports) port.Ready = true;
                if (id == 0) SendControl(0, EventConsolePort, 1);
                if (!string.IsNullOrEmpty(port.Name)) SendControl((int)id, EventPortName, 0, port.Name);
                SendControl((int)id, EventPortOpen, 1);
                break;
            case EventPortOpen when id < (uint)_ports.Length:
                lock (_ports) _ports[id].GuestOpen = value != 0;
                break;
        }
    }

    private void SendControl(int id, ushort ev, ushort value, string? name = null)
    {
        if (_control.Count >= MaxPendingControl) return;
        var m = new byte[ControlHeader + (name?.Length ?? 0)];
        BinaryPrimitives.WriteUInt32LittleEndian(m, (uint)id);
        BinaryPrimitives.WriteUInt16LittleEndian(m.AsSpan(4), ev);
        BinaryPrimitives.WriteUInt16LittleEndian(m.AsSpan(6), value);
        if (name is not null) System.Text.Encoding.ASCII.GetBytes(name, m.AsSpan(ControlHeader));
        _control.Enqueue(m);
    }

    // Puts waiting control messages into the driver's control receive buffers (one message a buffer; Linux posts
    // page-sized ones). A buffer too small for its message gets what fits.
    private void FlushControl()
    {
        var q = Queues[ControlRxQueue];
        if (!q.Enabled || _control.Count == 0) return;
        ushort old = q.UsedIdx;
        while (_control.Count > 0)
        {
            var r = q.Pop();
            if (r == PopResult.Broken) { QueueBroken(q); return; }
            if (r == PopResult.Empty)
            {
                if (q.ArmNotification()) continue;
                break;
            }
            int n = q.Chain.WriteWritable(0, _control.Dequeue());
            if (!q.Push(q.Chain.Head, (uint)n)) { QueueBroken(q); return; }
        }
        if (q.NeedsInterrupt(old)) InterruptQueue(q);
    }

    /// <inheritdoc/>
    protected override void OnDeviceReset()
    {
        _control.Clear();
        lock (_ports)
            foreach (var p in _ports) p.Ready = p.GuestOpen = false;
    }

    /// <inheritdoc/>
    protected override void OnDeviceConfigWrite(int offset, int size, ulong value)
    {
        if (offset == 8 && (DriverFeatures & FeatureEmergWrite) != 0) _ports[0].Backend.Write((byte)value);
    }

    // Input from port p's backend: fills its posted receive buffers; returns the bytes taken.
    private int Offer(Port p, ReadOnlySpan<byte> data)
    {
        if (!TryEnterRunning()) return 0;
        var rx = Queues[ReceiveQueue(p.Id)];
        int taken = 0;
        ushort old = rx.UsedIdx;
        try
        {
            while (taken < data.Length && rx.Enabled)
            {
                var r = rx.Pop();
                if (r == PopResult.Broken) { QueueBroken(rx); break; }
                if (r == PopResult.Empty)
                {
                    // With EVENT_IDX the driver kicks only past avail_event: ask for the kick that brings ReceiverHasRoom.
                    if (rx.ArmNotification()) continue;
                    break;
                }
                int n = rx.Chain.WriteWritable(0, data[taken..]);
                taken += n;
                if (!rx.Push(rx.Chain.Head, (uint)n)) { QueueBroken(rx); break; }
            }
            if (rx.NeedsInterrupt(old)) InterruptQueue(rx);
        }
        finally { ExitRunning(); }
        return taken;
    }

    // Snapshot: a multiport device saves its control conversation (a single port has none, and saves nothing, as before).
    /// <inheritdoc/>
    protected override void SaveDeviceState(BinaryWriter writer)
    {
        if (!Multiport) return;
        writer.Write(_ports.Length);
        lock (_ports)
            foreach (var p in _ports) { writer.Write(p.Ready); writer.Write(p.GuestOpen); }
        writer.Write(_control.Count);
        foreach (var m in _control) { writer.Write(m.Length); writer.Write(m); }
    }

    /// <inheritdoc/>
    protected override void LoadDeviceState(BinaryReader reader, int length)
    {
        if (!Multiport)
        {
            base.LoadDeviceState(reader, length);
            return;
        }
        int n = reader.ReadInt32();
        if (n != _ports.Length) throw new InvalidDataException($"virtio-console {Where}: {n} ports in the snapshot, {_ports.Length} here");
        var flags = new (bool Ready, bool Open)[n];
        for (int i = 0; i < n; i++) flags[i] = (reader.ReadBoolean(), reader.ReadBoolean());
        int count = reader.ReadInt32();
        if (count < 0 || count > MaxPendingControl) throw new InvalidDataException($"virtio-console {Where}: {count} pending control messages");
        var pending = new byte[count][];
        for (int i = 0; i < count; i++)
        {
            int len = reader.ReadInt32();
            if (len < ControlHeader || len > ControlHeader + MaxNameLength)
                throw new InvalidDataException($"virtio-console {Where}: a control message of {len} bytes");
            pending[i] = reader.ReadBytes(len);
            if (pending[i].Length != len) throw new InvalidDataException($"virtio-console {Where}: control message cut short");
        }
        lock (_ports)
            for (int i = 0; i < n; i++) (_ports[i].Ready, _ports[i].GuestOpen) = flags[i];
        _control.Clear();
        foreach (var m in pending) _control.Enqueue(m);
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        base.Dispose();
        foreach (var p in _ports) p.Backend.Dispose();
    }

    // One port: its backend, its name and what the driver told about it.
    private sealed class Port(int id, string? name, IConsoleBackend backend) : IConsoleReceiver
    {
        public readonly int Id = id;
        public readonly string? Name = name;
        public readonly IConsoleBackend Backend = backend;
        public VirtioConsole Device = null!;
        public int RoomFd = -1;
        public bool Ready, GuestOpen;

        public int Offer(ReadOnlySpan<byte> data) => Device.Offer(this, data);
    }
}
