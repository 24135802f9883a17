// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Pci;

namespace Hyve.Virtio;

/// <summary>
/// virtio-input (virtio 1.2 section 5.8) as an absolute pointing device, the tablet the VNC server's pointer events
/// reach the guest through: <c>-s N,virtio-input,tablet</c>. Device type 18, so PCI 1af4:1052, modern-only (the type is
/// newer than virtio 0.9.5 and has no transitional ID), class 09h/80h (input, other) as QEMU presents it.
/// <para>
/// The configuration space is a window the driver points with <c>select</c>/<c>subsel</c> (bytes 0 and 1); the device
/// answers with <c>size</c> (byte 2, 0 for "nothing there") and the union from byte 8: ID_NAME, ID_SERIAL, ID_DEVIDS
/// (BUS_VIRTUAL with QEMU's tablet IDs 0627:0003, so guests treat it as they treat QEMU's), EV_BITS for EV_KEY
/// (BTN_LEFT, BTN_RIGHT, BTN_MIDDLE), EV_REL (REL_WHEEL, REL_HWHEEL) and EV_ABS (ABS_X, ABS_Y), and ABS_INFO for the two
/// axes (0-32767). PROP_BITS is empty, as QEMU's tablet has it.
/// </para>
/// <para>
/// Events are 8-byte <c>virtio_input_event</c>s (le16 type, le16 code, le32 value) written one per buffer the driver
/// posted on the event queue (0); the status queue (1), which carries LED and force-feedback requests, is drained and
/// ignored (a tablet has neither). A report (positions, button changes, wheel steps, SYN_REPORT) that finds too few
/// buffers waits in a bounded backlog that the next posted buffers take; past the bound whole reports are dropped, so a
/// guest that stops reading never makes the VMM grow. Why virtio-input rather than a USB tablet: Hyve has no xHCI, and
/// Linux drives this device with virtio_input.ko (a module in Debian's kernel) and evdev; OVMF has no driver for it,
/// so firmware menus get keys only.
/// </para>
/// </summary>
public sealed class VirtioInput : VirtioPciDevice
{
    /// <summary>Virtio device type 18.</summary>
    public const int Type = 18;
    /// <summary>Bytes of the configuration window: select, subsel, size, 5 reserved, a 128-byte union.</summary>
    public const int ConfigBytes = 136;
    /// <summary>Largest value of ABS_X and ABS_Y (QEMU's INPUT_EVENT_ABS_MAX).</summary>
    public const int AbsMax = 0x7fff;
    /// <summary>The name the guest sees (ID_NAME; Linux's /sys/class/input/*/name).</summary>
    public const string TabletName = "Hyve Virtio Tablet";
    /// <summary>Events held for a guest that has not posted buffers (whole reports beyond it are dropped).</summary>
    public const int BacklogEvents = 256;

    // virtio_input_config_select.
    /// <summary>VIRTIO_INPUT_CFG_* selectors.</summary>
    public const byte CfgUnset = 0x00, CfgIdName = 0x01, CfgIdSerial = 0x02, CfgIdDevids = 0x03, CfgPropBits = 0x10,
        CfgEvBits = 0x11, CfgAbsInfo = 0x12;
    // Linux input event types and codes (include/uapi/linux/input-event-codes.h).
    /// <summary>Event types.</summary>
    public const ushort EvSyn = 0x00, EvKey = 0x01, EvRel = 0x02, EvAbs = 0x03;
    /// <summary>Event codes.</summary>
    public const ushort SynReport = 0, BtnLeft = 0x110, BtnRight = 0x111, BtnMiddle = 0x112, AbsX = 0x00, AbsY = 0x01,
        RelHWheel = 0x06, RelWheel = 0x08;
    /// <summary>BUS_VIRTUAL.</summary>
    public const ushort BusVirtual = 0x06;

    // VNC button mask bit -> evdev code (RFC 6143 7.5.5: bit 0 left, 1 middle, 2 right).
    private static readonly ushort[] ButtonCodes = [BtnLeft, BtnMiddle, BtnRight];

    private readonly ulong[] _backlog = new ulong[BacklogEvents];
    private int _backlogHead, _backlogCount;
    private int _buttons;
    private long _dropped;

    private VirtioInput(PciDeviceContext ctx)
        : base(ctx, Type, 0, 0x09, 0x80, queues: 2, queueSize: 64, deviceFeatures: 0, configSize: ConfigBytes)
        => StartIo();

    /// <summary>Factory for <c>virtio-input</c>: the leading word (key <c>path</c>, bhyve's) must be <c>tablet</c>.</summary>
    public static PciDevice Create(PciDeviceContext ctx)
    {
        string? kind = ctx.Get("path");
        if (kind != "tablet")
            throw new HostConfigException(kind is null
                ? $"{ctx.Where} virtio-input: say which device (-s N,virtio-input,tablet)"
                : $"{ctx.Where} virtio-input: '{kind}': hyve's virtio-input is the VNC tablet only (-s N,virtio-input,tablet); host evdev passthrough is not implemented");
        return new VirtioInput(ctx);
    }

    /// <summary>Whole reports dropped because the guest posted no buffers for too long.</summary>
    public long DroppedReports => Interlocked.Read(ref _dropped);

    // ---- configuration window -----------------------------------------------------------------------------

    /// <inheritdoc/>
    protected override void OnDeviceConfigWrite(int offset, int size, ulong value)
    {
        // Only select (0) and subsel (1) are writable; a wider write starting at 0 sets both.
        if (offset > 1) return;
        for (int i = 0; i < size && offset + i <= 1; i++) DeviceConfig[offset + i] = (byte)(value >> (8 * i));
        Answer(DeviceConfig[0], DeviceConfig[1], DeviceConfig.AsSpan());
    }

    /// <summary>Fills <paramref name="config"/> (136 bytes) as the device answers <paramref name="select"/>/<paramref name="subsel"/>.</summary>
    public static void Answer(byte select, byte subsel, Span<byte> config)
    {
        config[0] = select;
        config[1] = subsel;
        config[2..].Clear();
        var u = config[8..];
        int size = 0;
        switch (select)
        {
            case CfgIdName when subsel == 0:
                size = Encoding.ASCII.GetBytes(TabletName, u);
                break;
            case CfgIdSerial when subsel == 0:
                size = Encoding.ASCII.GetBytes("hyve-tablet", u);
                break;
            case CfgIdDevids when subsel == 0:
                BinaryPrimitives.WriteUInt16LittleEndian(u, BusVirtual);
                BinaryPrimitives.WriteUInt16LittleEndian(u[2..], 0x0627); // QEMU's tablet vendor and product
                BinaryPrimitives.WriteUInt16LittleEndian(u[4..], 0x0003);
                BinaryPrimitives.WriteUInt16LittleEndian(u[6..], 0x0001);
                size = 8;
                break;
            case CfgEvBits:
                size = (ushort)subsel switch
                {
                    EvKey => SetBits(u, BtnLeft, BtnRight, BtnMiddle),
                    EvRel => SetBits(u, RelHWheel, RelWheel),
                    EvAbs => SetBits(u, AbsX, AbsY),
                    _ => 0,
                };
                break;
            case CfgAbsInfo when (ushort)subsel is AbsX or AbsY:
                BinaryPrimitives.WriteUInt32LittleEndian(u, 0);          // min
                BinaryPrimitives.WriteUInt32LittleEndian(u[4..], AbsMax); // max
                // fuzz, flat and res stay 0
                size = 20;
                break;
        }
        config[2] = (byte)size;
    }

    // A bitmap with the given bits set; its size is the bytes up to the highest one (the spec's "size" of a bitmap).
    private static int SetBits(Span<byte> bitmap, params ReadOnlySpan<ushort> bits)
    {
        int size = 0;
        foreach (ushort b in bits)
        {
            bitmap[b >> 3] |= (byte)(1 << (b & 7));
            size = Math.Max(size, (b >> 3) + 1);
        }
        return size;
    }

    // ---- events -------------------------------------------------------------------------------------------

    /// <summary>Packs one virtio_input_event as it lies in guest memory (little-endian: type, code, value).</summary>
    public static ulong Event(ushort type, ushort code, int value) => type | (ulong)code << 16 | (ulong)(uint)value << 32;

    /// <summary>
    /// Encodes a VNC pointer event (position in pixels of a <paramref name="width"/> x <paramref name="height"/> screen,
    /// RFB button mask) as the events of one report, given the buttons held before; returns how many it wrote.
    /// </summary>
    public static int EncodePointer(int x, int y, int buttons, int oldButtons, int width, int height, Span<ulong> events)
    {
        int n = 0;
        events[n++] = Event(EvAbs, AbsX, Scale(x, width));
        events[n++] = Event(EvAbs, AbsY, Scale(y, height));
        for (int b = 0; b < ButtonCodes.Length; b++)
        {
            int bit = 1 << b;
            if (((buttons ^ oldButtons) & bit) != 0) events[n++] = Event(EvKey, ButtonCodes[b], (buttons & bit) != 0 ? 1 : 0);
        }
        // Wheel "buttons" 4-7 step once on each press (RFB clients send press then release per notch).
        int pressed = buttons & ~oldButtons;
        if ((pressed & 0x08) != 0) events[n++] = Event(EvRel, RelWheel, 1);
        if ((pressed & 0x10) != 0) events[n++] = Event(EvRel, RelWheel, -1);
        if ((pressed & 0x20) != 0) events[n++] = Event(EvRel, RelHWheel, -1);
        if ((pressed & 0x40) != 0) events[n++] = Event(EvRel, RelHWheel, 1);
        events[n++] = Event(EvSyn, SynReport, 0);
        return n;
    }

    /// <summary>Maps pixel <paramref name="v"/> of a <paramref name="size"/>-pixel axis onto 0..<see cref="AbsMax"/> (first pixel 0, last AbsMax).</summary>
    public static int Scale(int v, int size)
    {
        if (size <= 1) return 0;
        v = Math.Clamp(v, 0, size - 1);
        return (int)((long)v * AbsMax / (size - 1));
    }

    /// <summary>A VNC pointer event (the VNC server's <c>Pointer</c> handler): one report to the guest. Ignored until the
    /// driver is running.</summary>
    public void Pointer(int x, int y, int buttons, int width, int height)
    {
        Span<ulong> ev = stackalloc ulong[12];
        if (!TryEnterRunning()) return;
        try
        {
            int n = EncodePointer(x, y, buttons, _buttons, width, height, ev);
            _buttons = buttons & 0x07;
            if (_backlogCount + n > BacklogEvents) { Interlocked.Increment(ref _dropped); return; }
            for (int i = 0; i < n; i++) _backlog[(_backlogHead + _backlogCount++) % BacklogEvents] = ev[i];
            Deliver();
        }
        finally { ExitRunning(); }
    }

    // Moves backlog events into posted event buffers (under the transport lock); one interrupt for the lot.
    private void Deliver()
    {
        var q = Queues[0];
        if (!q.Enabled) return;
        ushort old = q.UsedIdx;
        Span<byte> e = stackalloc byte[8];
        while (_backlogCount > 0)
        {
            var r = q.Pop();
            if (r == PopResult.Broken) { QueueBroken(q); break; }
            if (r == PopResult.Empty)
            {
                if (q.ArmNotification()) continue;
                break;
            }
            BinaryPrimitives.WriteUInt64LittleEndian(e, _backlog[_backlogHead]);
            int w = q.Chain.WriteWritable(0, e);
            if (w < 8) q.MarkBroken("event buffer shorter than a virtio_input_event");
            if (q.Error is not null) { QueueBroken(q); break; }
            _backlogHead = (_backlogHead + 1) % BacklogEvents;
            _backlogCount--;
            if (!q.Push(q.Chain.Head, (uint)w)) { QueueBroken(q); break; }
        }
        if (q.NeedsInterrupt(old)) InterruptQueue(q);
    }

    /// <inheritdoc/>
    protected override void OnQueueNotify(Virtqueue queue)
    {
        if (queue.Index == 0) Deliver(); // new event buffers: the backlog goes first
        else DrainQueue(queue);
    }

    /// <inheritdoc/>
    protected override uint HandleChain(Virtqueue queue, DescriptorChain chain) => 0; // status events (LEDs): none apply

    /// <inheritdoc/>
    protected override void OnDeviceReset()
    {
        _backlogHead = _backlogCount = 0;
        _buttons = 0;
        DeviceConfig.AsSpan().Clear();
    }
}
