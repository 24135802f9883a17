// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Pci;
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Display;

/// <summary>What the guest has programmed: the scan-out the VNC server reads from the framebuffer segment.</summary>
/// <param name="Enabled">DISPI is enabled (a linear graphics mode); false: legacy VGA, shown blank.</param>
/// <param name="Width">Visible width in pixels.</param>
/// <param name="Height">Visible height in pixels.</param>
/// <param name="Bpp">Bits per pixel: 8 (palette), 15, 16, 24 or 32.</param>
/// <param name="Stride">Bytes from one line to the next (the virtual width).</param>
/// <param name="Offset">Byte offset of the first visible pixel in the framebuffer.</param>
/// <param name="BigEndian">Pixels stored big-endian (QEMU's extended register at 0x604).</param>
public readonly record struct DisplayMode(bool Enabled, int Width, int Height, int Bpp, int Stride, long Offset, bool BigEndian);

/// <summary>
/// QEMU's standard VGA (<c>-vga std</c>) as a PCI function: 1234:1111, class 03h/00h, revision 2. BAR 0 is the linear
/// framebuffer, a prefetchable memory BAR backed by the devmem segment <c>framebuffer</c> (mapped straight into the
/// guest, so drawing costs no exit); BAR 2 is QEMU's 4 KiB MMIO page: an EDID block at 0x000, the VGA ports
/// 0x3C0-0x3DF at 0x400, the Bochs VBE "DISPI" registers at 0x500 (16-bit, index * 2) and QEMU's extended registers at
/// 0x600 (region size, framebuffer endianness). With <c>vga=io</c> (bhyve's default) the same VGA ports and the DISPI
/// index/data ports 0x1CE/0x1CF also answer on the I/O bus. The DISPI model follows Bochs' vbe.h and QEMU's vga.c:
/// IDs 0xB0C0-0xB0C5, GETCAPS makes XRES/YRES/BPP read their maxima, enabling resets the virtual size and offsets and
/// clears memory unless NOCLEARMEM. Legacy VGA memory (0xA0000) and text mode are not modelled: OVMF's QemuVideoDxe
/// and Linux's efifb use only the linear framebuffer.
/// </summary>
public sealed class StdVga : PciDevice, IMmioDevice, IDisplaySurface, IDeviceState
{
    /// <summary>QEMU's vendor ID.</summary>
    public const ushort Vendor = 0x1234;
    /// <summary>The standard VGA's device ID.</summary>
    public const ushort Device = 0x1111;
    /// <summary>Default framebuffer size (QEMU's vgamem_mb=16).</summary>
    public const ulong DefaultVramSize = 16 << 20;
    /// <summary>Largest mode the DISPI accepts (bhyve's fbuf limit is 1920x1200; Bochs allows more).</summary>
    public const int MaxXres = 2560, MaxYres = 1600, MaxBpp = 32;
    /// <summary>Bochs DISPI index port.</summary>
    public const ushort DispiIndexPort = 0x1ce;
    /// <summary>Bochs DISPI data port.</summary>
    public const ushort DispiDataPort = 0x1cf;
    /// <summary>First legacy VGA port.</summary>
    public const ushort VgaPortBase = 0x3c0;

    // DISPI register indexes (vbe.h).
    /// <summary>DISPI register indexes (Bochs vbe.h).</summary>
    public const int IndexId = 0, IndexXres = 1, IndexYres = 2, IndexBpp = 3, IndexEnable = 4, IndexBank = 5,
        IndexVirtWidth = 6, IndexVirtHeight = 7, IndexXOffset = 8, IndexYOffset = 9, IndexVideoMemory64K = 10, IndexCount = 11;
    // ENABLE bits.
    /// <summary>DISPI ENABLE bits (Bochs vbe.h).</summary>
    public const ushort Enabled = 0x01, GetCaps = 0x02, EightBitDac = 0x20, LfbEnabled = 0x40, NoClearMem = 0x80;
    internal const ushort Id0 = 0xb0c0, Id5 = 0xb0c5;
    private const uint LittleEndianMagic = 0x1e1e1e1e, BigEndianMagic = 0xbebebebe;

    private readonly object _gate = new();
    private readonly ushort[] _dispi = new ushort[IndexCount];
    private readonly byte[] _edid;
    private ushort _dispiIndex;
    private bool _bigEndian;
    private int _modeGeneration;

    /// <summary>A standard VGA whose framebuffer is <paramref name="framebuffer"/>; <paramref name="width"/> x
    /// <paramref name="height"/> is the preferred mode its EDID names.</summary>
    public StdVga(MemSegment framebuffer, int width, int height) : base(Vendor, Device, 0x03, 0x00, progIf: 0, revision: 2)
    {
        Framebuffer = framebuffer ?? throw new ArgumentNullException(nameof(framebuffer));
        SetSubsystem(0x1af4, 0x1100); // QEMU's subsystem IDs
        _edid = Edid.Build(width, height);
        AddDevMemBar(0, framebuffer, is64: false, prefetchable: true);
        AddMemoryBar(2, 4096, this);
        ResetRegisters();
    }

    /// <summary>The framebuffer segment (BAR 0).</summary>
    public MemSegment Framebuffer { get; }

    /// <inheritdoc/>
    public ReadOnlySpan<byte> Memory => TextMode ? Text!.Frame : Framebuffer.Span;

    /// <summary>The legacy VGA register file.</summary>
    public VgaRegisters Vga { get; } = new();

    /// <summary>Counts mode changes (enable, disable, size, depth, offsets); the display source compares it.</summary>
    public int ModeGeneration => Volatile.Read(ref _modeGeneration);

    /// <summary>The scan-out as programmed now.</summary>
    public DisplayMode Mode
    {
        get
        {
            lock (_gate) return ComputeMode();
        }
    }

    /// <summary>True while the DAC holds 8-bit components (DISPI 8BIT_DAC).</summary>
    public bool DacEightBit
    {
        get { lock (_gate) return (_dispi[IndexEnable] & EightBitDac) != 0; }
    }

    /// <summary>Copies the palette (for 8-bit modes) under the device lock.</summary>
    public void CopyPalette(Span<uint> palette)
    {
        lock (_gate) Vga.CopyPalette(palette, (_dispi[IndexEnable] & EightBitDac) != 0);
    }

    /// <summary>The port handler for 0x1CE/0x1CF and 0x3C0-0x3DF (vga=io).</summary>
    public IPortDevice LegacyPorts => new Ports(this);

    /// <summary>Factory for <c>fbuf</c>: reads w, h, vga and creates the framebuffer segment (the VNC side is wired by the machine).</summary>
    public static PciDevice Create(PciDeviceContext ctx)
    {
        var opts = FbufOptions.Parse(ctx.Conf, ctx.Where);
        foreach (var d in ctx.Bus.Devices)
            if (d is StdVga) throw new HostConfigException($"{ctx.Where}: only one fbuf device is supported");
        var seg = ctx.Bus.Memory.CreateDevMem("framebuffer", DefaultVramSize);
        VgaText? text = null;
        byte[]? rom = null;
        if (opts.Vga == FbufVga.On)
        {
            try { rom = File.ReadAllBytes(VgaBiosPath); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new HostConfigException($"{ctx.Where}.vga=on: cannot read the VGA BIOS {VgaBiosPath} ({e.Message}; apt-get install seabios)");
            }
            var font = VgaText.FindFont(rom) ?? throw new HostConfigException($"{ctx.Where}.vga=on: {VgaBiosPath} has no 8x16 font");
            if (rom.Length > 256 << 10) throw new HostConfigException($"{ctx.Where}.vga=on: {VgaBiosPath} is larger than 256 KiB");
            text = new VgaText(font);
        }
        var vga = new StdVga(seg, opts.Width, opts.Height) { Options = opts, Dirty = ctx.Bus.Memory.EnableDirtyLog(seg), Text = text, GuestRam = ctx.Bus.Memory };
        if (rom is not null)
        {
            // The VGA BIOS as the expansion ROM, as QEMU gives its VGA: SeaBIOS copies it to 0xC0000 and runs it.
            ulong size = 2048;
            while (size < (ulong)rom.Length) size <<= 1;
            var romSeg = ctx.Bus.Memory.CreateDevMem("vgarom", Math.Max(size, 4096));
            rom.CopyTo(romSeg.Span);
            vga.SetExpansionRom(romSeg);
        }
        if (opts.Vga is FbufVga.Io or FbufVga.On)
        {
            var ports = vga.LegacyPorts;
            ctx.Bus.Ports.Register(DispiIndexPort, 2, ports);
            ctx.Bus.Ports.Register(VgaPortBase, 0x20, ports);
        }
        return vga;
    }

    /// <summary>The VGA BIOS <c>vga=on</c> loads (Debian's seabios package).</summary>
    public const string VgaBiosPath = "/usr/share/seabios/vgabios-stdvga.bin";
    /// <summary>Guest-physical address of the colour text buffer.</summary>
    public const ulong TextBuffer = 0xb8000;

    /// <summary>The text-mode renderer (<c>vga=on</c>), or null.</summary>
    public VgaText? Text { get; private init; }

    private GuestMemory? GuestRam { get; init; }
    private bool _wasText;

    /// <summary>True while the screen shows VGA text mode: <c>vga=on</c>, no DISPI mode, the graphics controller in
    /// alphanumeric mode (GC 06h bit 0 clear).</summary>
    public bool TextMode
    {
        get { lock (_gate) return TextModeLocked; }
    }

    private bool TextModeLocked => Text is not null && (_dispi[IndexEnable] & Enabled) == 0 && (Vga.Gc(6) & 1) == 0;

    // After a VGA register write: entering or leaving text mode is a mode change.
    private void VgaWritten()
    {
        bool text;
        lock (_gate) text = TextModeLocked;
        if (text != _wasText) { _wasText = text; ModeChanged(); }
        else Dirty?.Poke(); // the palette may have changed
    }

    /// <inheritdoc/>
    public bool Polled => TextMode;

    /// <inheritdoc/>
    public bool Prepare()
    {
        if (Text is null || GuestRam is null) return false;
        int start, cursor, cs, ce;
        lock (_gate)
        {
            if (!TextModeLocked) return false;
            start = Vga.Crtc(0x0c) << 8 | Vga.Crtc(0x0d);
            cursor = (Vga.Crtc(0x0e) << 8 | Vga.Crtc(0x0f)) - start;
            cs = Vga.Crtc(0x0a);
            ce = Vga.Crtc(0x0b) & 0x1f;
        }
        if ((cs & 0x20) != 0 || (uint)cursor >= VgaText.Cols * VgaText.Rows) cursor = -1;
        // The buffer is 32 KiB at 0xB8000; a start address that runs past it shows blank cells.
        ulong at = TextBuffer + (ulong)(start * 2 % 0x8000);
        int len = (int)Math.Min(VgaText.BufferBytes, 0xc0000 - at);
        ReadOnlySpan<byte> cells = GuestRam.TryGetSpan(at, len, MemProt.Read, out var s) ? s : [];
        return Text.Render(cells, cursor, cs & 0x1f, ce);
    }

    /// <summary>The framebuffer's dirty-page log (the VNC server reads only what the guest wrote).</summary>
    public DirtyLog? Dirty { get; private init; }

    // A change the dirty log cannot see (mode, palette, endianness): wake a refresher that sleeps on the log.
    private void ModeChanged()
    {
        Interlocked.Increment(ref _modeGeneration);
        Dirty?.Poke();
    }

    /// <summary>The fbuf options it was created with (the machine starts the VNC server from them).</summary>
    public FbufOptions Options { get; private init; } = FbufOptions.Default;

    /// <inheritdoc/>
    protected override void OnReset()
    {
        lock (_gate) ResetRegisters();
    }

    private void ResetRegisters()
    {
        Array.Clear(_dispi);
        _dispi[IndexId] = Id5;
        _dispi[IndexBpp] = 8;
        _dispi[IndexVideoMemory64K] = (ushort)(Framebuffer.Length >> 16);
        _dispiIndex = 0;
        _bigEndian = false;
        Vga.Reset();
        ModeChanged();
    }

    private DisplayMode ComputeMode()
    {
        if (TextModeLocked) return new DisplayMode(true, VgaText.Width, VgaText.Height, 32, VgaText.Width * 4, 0, false);
        if ((_dispi[IndexEnable] & Enabled) == 0) return new DisplayMode(false, 0, 0, 0, 0, 0, _bigEndian);
        int bpp = _dispi[IndexBpp];
        int bytes = (bpp + 7) / 8;
        int w = _dispi[IndexXres], h = _dispi[IndexYres];
        int stride = _dispi[IndexVirtWidth] * bytes;
        long offset = (long)_dispi[IndexYOffset] * stride + (long)_dispi[IndexXOffset] * bytes;
        // A mode that does not fit the framebuffer shows nothing rather than reading past it.
        if (w == 0 || h == 0 || offset + (long)(h - 1) * stride + (long)w * bytes > (long)Framebuffer.Length)
            return new DisplayMode(false, 0, 0, 0, 0, 0, _bigEndian);
        return new DisplayMode(true, w, h, bpp, stride, offset, _bigEndian);
    }

    // ---- DISPI --------------------------------------------------------------------------------------------

    /// <summary>Reads DISPI register <paramref name="index"/>.</summary>
    public ushort DispiRead(int index)
    {
        lock (_gate)
        {
            if ((uint)index >= IndexCount) return 0;
            if ((_dispi[IndexEnable] & GetCaps) != 0)
            {
                switch (index)
                {
                    case IndexXres: return MaxXres;
                    case IndexYres: return MaxYres;
                    case IndexBpp: return MaxBpp;
                }
            }
            return _dispi[index];
        }
    }

    /// <summary>Writes DISPI register <paramref name="index"/> as QEMU's vbe_ioport_write_data does.</summary>
    public void DispiWrite(int index, ushort value)
    {
        lock (_gate)
        {
            switch (index)
            {
                case IndexId:
                    if (value >= Id0 && value <= Id5) _dispi[IndexId] = value;
                    return;
                case IndexXres:
                case IndexYres:
                case IndexBpp:
                case IndexVirtWidth:
                case IndexVirtHeight:
                case IndexXOffset:
                case IndexYOffset:
                    if (index == IndexBpp && value == 0) value = 8;
                    _dispi[index] = value;
                    break;
                case IndexBank:
                    _dispi[IndexBank] = (ushort)(value & ((Framebuffer.Length >> 16) - 1));
                    return;
                case IndexEnable:
                    Enable(value);
                    break;
                default:
                    return; // VIDEO_MEMORY_64K and unknown indexes are read-only
            }
            FixupRegisters();
            ModeChanged();
        }
    }

    private void Enable(ushort value)
    {
        bool was = (_dispi[IndexEnable] & Enabled) != 0;
        if ((value & Enabled) != 0 && !was)
        {
            // Turning the mode on: the virtual screen is the visible one at offset 0 (QEMU's vbe_ioport_write_data).
            _dispi[IndexVirtWidth] = _dispi[IndexXres];
            _dispi[IndexVirtHeight] = _dispi[IndexYres];
            _dispi[IndexXOffset] = 0;
            _dispi[IndexYOffset] = 0;
            _dispi[IndexEnable] = value;
            FixupRegisters();
            if ((value & NoClearMem) == 0)
            {
                int bytes = (_dispi[IndexBpp] + 7) / 8;
                long n = Math.Min((long)_dispi[IndexVirtWidth] * bytes * _dispi[IndexYres], (long)Framebuffer.Length);
                Framebuffer.Slice(0, (int)n).Clear();
            }
        }
        _dispi[IndexEnable] = value;
    }

    // QEMU's vbe_fixup_regs: a valid depth, widths a multiple of 8 within the limits, a virtual size that holds the
    // visible one and fits the memory, offsets that keep the visible area inside the virtual one.
    private void FixupRegisters()
    {
        ushort bpp = _dispi[IndexBpp];
        if (bpp is not (8 or 15 or 16 or 24 or 32)) bpp = 8;
        _dispi[IndexBpp] = bpp;
        int bytes = (bpp + 7) / 8;
        int xres = Math.Clamp(_dispi[IndexXres] & ~7, 8, MaxXres);
        int yres = Math.Clamp((int)_dispi[IndexYres], 1, MaxYres);
        int vw = Math.Max(_dispi[IndexVirtWidth] & ~7, xres);
        long lineBytes = (long)vw * bytes;
        if (lineBytes * yres > (long)Framebuffer.Length) { vw = xres; lineBytes = (long)xres * bytes; }
        int maxLines = (int)Math.Min((long)Framebuffer.Length / lineBytes, 0xffff);
        int vh = Math.Clamp((int)_dispi[IndexVirtHeight], yres, Math.Max(maxLines, yres));
        if ((long)vh * lineBytes > (long)Framebuffer.Length) { yres = Math.Min(yres, maxLines); vh = maxLines; }
        int xo = Math.Min((int)_dispi[IndexXOffset], vw - xres);
        int yo = Math.Min((int)_dispi[IndexYOffset], vh - yres);
        _dispi[IndexXres] = (ushort)xres;
        _dispi[IndexYres] = (ushort)yres;
        _dispi[IndexVirtWidth] = (ushort)vw;
        _dispi[IndexVirtHeight] = (ushort)vh;
        _dispi[IndexXOffset] = (ushort)xo;
        _dispi[IndexYOffset] = (ushort)yo;
    }

    // ---- BAR 2: QEMU's MMIO page ---------------------------------------------------------------------------

    /// <inheritdoc/>
    public ulong MmioRead(ulong offset, int size)
    {
        if (offset < 0x400)
        {
            ulong v = 0;
            for (int i = 0; i < size && offset + (ulong)i < 0x400; i++)
                v |= (ulong)(offset + (ulong)i < (ulong)_edid.Length ? _edid[offset + (ulong)i] : (byte)0) << (i * 8);
            return v;
        }
        if (offset < 0x420)
        {
            ulong v = 0;
            lock (_gate)
                for (int i = 0; i < size && offset + (ulong)i < 0x420; i++)
                    v |= (ulong)Vga.Read((int)(offset - 0x400) + i) << (i * 8);
            return v;
        }
        if (offset >= 0x500 && offset < 0x500 + IndexCount * 2)
        {
            if (size == 1) return (ulong)(DispiRead((int)(offset - 0x500) >> 1) >> (int)((offset & 1) * 8)) & 0xff;
            return DispiRead((int)(offset - 0x500) >> 1);
        }
        if (offset >= 0x600 && offset < 0x608)
        {
            uint reg = offset < 0x604 ? 8u : _bigEndian ? BigEndianMagic : LittleEndianMagic;
            return size >= 4 ? reg : (reg >> (int)((offset & 3) * 8)) & ((1u << (size * 8)) - 1);
        }
        return 0;
    }

    /// <inheritdoc/>
    public void MmioWrite(ulong offset, int size, ulong value)
    {
        if (offset >= 0x400 && offset < 0x420)
        {
            lock (_gate)
                for (int i = 0; i < size && offset + (ulong)i < 0x420; i++)
                    Vga.Write((int)(offset - 0x400) + i, (byte)(value >> (i * 8)));
            VgaWritten();
            return;
        }
        if (offset >= 0x500 && offset < 0x500 + IndexCount * 2 && size >= 2 && (offset & 1) == 0)
        {
            DispiWrite((int)(offset - 0x500) >> 1, (ushort)value);
            return;
        }
        if (offset == 0x604 && size == 4)
        {
            bool big = (uint)value == BigEndianMagic;
            if ((uint)value != BigEndianMagic && (uint)value != LittleEndianMagic) return;
            lock (_gate) _bigEndian = big;
            ModeChanged();
        }
    }

    // ---- legacy ports (vga=io) -----------------------------------------------------------------------------

    private sealed class Ports(StdVga vga) : IPortDevice
    {
        public uint PortRead(ushort port, int size)
        {
            if (port == DispiIndexPort) return vga._dispiIndex;
            if (port == DispiDataPort) return vga.DispiRead(vga._dispiIndex);
            uint v = 0;
            lock (vga._gate)
                for (int i = 0; i < size && port + i < VgaPortBase + 0x20; i++)
                    v |= (uint)vga.Vga.Read(port + i - VgaPortBase) << (i * 8);
            return v;
        }

        public void PortWrite(ushort port, int size, uint value)
        {
            // The DISPI ports are 16 bits wide (Bochs decodes 0x1CF as the data word; 0x1D0 is its alias for some BIOSes).
            if (port == DispiIndexPort) { vga._dispiIndex = (ushort)value; return; }
            if (port == DispiDataPort) { vga.DispiWrite(vga._dispiIndex, (ushort)value); return; }
            lock (vga._gate)
                for (int i = 0; i < size && port + i < VgaPortBase + 0x20; i++)
                    vga.Vga.Write(port + i - VgaPortBase, (byte)(value >> (i * 8)));
            vga.VgaWritten();
        }
    }

    // ---- state ---------------------------------------------------------------------------------------------

    /// <inheritdoc/>
    public string StateName => "stdvga";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Writes the DISPI registers and index, the endianness register and the VGA register file (the
    /// framebuffer's contents belong to its devmem segment).</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_gate)
        {
            foreach (ushort v in _dispi) w.Write(v);
            w.Write(_dispiIndex);
            w.Write(_bigEndian);
            var vga = Vga.Save();
            w.Write(vga.Length);
            w.Write(vga);
        }
    }

    /// <summary>Reads what <see cref="SaveState"/> wrote.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        var dispi = new ushort[IndexCount];
        for (int i = 0; i < dispi.Length; i++) dispi[i] = r.ReadUInt16();
        ushort index = r.ReadUInt16();
        bool big = r.ReadBoolean();
        int n = r.ReadInt32();
        if (n is < 0 or > 4096) throw new InvalidDataException($"stdvga state: VGA register file of {n} bytes");
        var vga = r.ReadBytes(n);
        lock (_gate)
        {
            if (!Vga.Load(vga)) throw new InvalidDataException("stdvga state: VGA register file of the wrong size");
            dispi.CopyTo(_dispi, 0);
            _dispi[IndexVideoMemory64K] = (ushort)(Framebuffer.Length >> 16);
            _dispiIndex = index;
            _bigEndian = big;
            ModeChanged();
        }
    }
}
