// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Devices;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.FwCfg;

public sealed class FwCfgTests : IDisposable
{
    private readonly GuestMemory _mem = new(16ul << 20);
    private readonly PortBus _ports = new();
    private readonly Devices.FwCfg _fw;

    public FwCfgTests()
    {
        _fw = new Devices.FwCfg(_mem);
        _fw.Register(_ports);
    }

    public void Dispose() => _mem.Dispose();

    private byte[] ReadItem(ushort selector, int length)
    {
        _ports.Write(0x510, 2, selector);
        var b = new byte[length];
        for (int i = 0; i < length; i++) b[i] = (byte)_ports.Read(0x511, 1);
        return b;
    }

    private Span<byte> Ram(ulong gpa, int len)
    {
        Assert.True(_mem.TryGetSpan(gpa, len, MemProt.Read, out var s));
        return s;
    }

    /// <summary>Writes an FWCfgDmaAccess at <paramref name="desc"/> and starts it; returns the control word afterwards.</summary>
    private uint Dma(ulong desc, uint control, uint length, ulong address)
    {
        var d = Ram(desc, 16);
        BinaryPrimitives.WriteUInt32BigEndian(d, control);
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], length);
        BinaryPrimitives.WriteUInt64BigEndian(d[8..], address);
        // The guest writes the big-endian halves with 32-bit OUTs (as SeaBIOS: outl(cpu_to_be32(x))).
        _ports.Write(0x514, 4, BinaryPrimitives.ReverseEndianness((uint)(desc >> 32)));
        _ports.Write(0x518, 4, BinaryPrimitives.ReverseEndianness((uint)desc));
        return BinaryPrimitives.ReadUInt32BigEndian(Ram(desc, 4));
    }

    [Fact]
    public void SignatureAndFeatureBitsThroughTheDataPort()
    {
        Assert.Equal("QEMU", Encoding.ASCII.GetString(ReadItem(0x0000, 4)));
        // Past the end of an item the data port reads zero.
        Assert.Equal(0u, _ports.Read(0x511, 1));
        uint id = BinaryPrimitives.ReadUInt32LittleEndian(ReadItem(0x0001, 4));
        Assert.Equal(3u, id & 3); // traditional interface and DMA
        // Reading the DMA register gives the "QEMU CFG" signature.
        uint lo = _ports.Read(0x514, 4), hi = _ports.Read(0x518, 4);
        var sig = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(sig, lo);
        BinaryPrimitives.WriteUInt32LittleEndian(sig.AsSpan(4), hi);
        Assert.Equal("QEMU CFG", Encoding.ASCII.GetString(sig));
    }

    [Fact]
    public void FileDirectoryListsNamesSizesAndSelectors()
    {
        ushort a = _fw.AddFile("etc/table-loader", new byte[300]);
        ushort b = _fw.AddFile("opt/org.example/greeting", "hello"u8.ToArray());
        Assert.Equal(0x20, a);
        Assert.Equal(0x21, b);
        var count = ReadItem(0x0019, 4);
        int n = (int)BinaryPrimitives.ReadUInt32BigEndian(count);
        Assert.Equal(2, n);
        var dir = ReadItem(0x0019, 4 + 64 * n).AsSpan(4);
        var seen = new Dictionary<string, (uint Size, ushort Sel)>();
        for (int i = 0; i < n; i++)
        {
            var e = dir.Slice(64 * i, 64);
            string name = Encoding.ASCII.GetString(e[8..]).TrimEnd('\0');
            seen[name] = (BinaryPrimitives.ReadUInt32BigEndian(e), BinaryPrimitives.ReadUInt16BigEndian(e[4..]));
        }
        Assert.Equal((300u, (ushort)0x20), seen["etc/table-loader"]);
        Assert.Equal((5u, (ushort)0x21), seen["opt/org.example/greeting"]);
        Assert.Equal("hello", Encoding.ASCII.GetString(ReadItem(b, 5)));
        // Replacing a file keeps its selector and updates the directory's size.
        Assert.Equal(b, _fw.AddFile("opt/org.example/greeting", "hi"u8.ToArray()));
        var e2 = ReadItem(0x0019, 4 + 128).AsSpan(4 + 64);
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32BigEndian(e2));
    }

    [Fact]
    public void DmaReadCopiesAFileIntoGuestMemory()
    {
        var data = new byte[5000];
        new Random(3).NextBytes(data);
        ushort sel = _fw.AddFile("etc/acpi/tables", data);
        uint ctl = Dma(0x1000, (uint)sel << 16 | Devices.FwCfg.DmaSelect | Devices.FwCfg.DmaRead, 5000, 0x10000);
        Assert.Equal(0u, ctl);
        Assert.True(Ram(0x10000, 5000).SequenceEqual(data));
        // Reading on continues at the offset; past the end the guest gets zeros.
        Ram(0x20000, 16).Fill(0xee);
        Assert.Equal(0u, Dma(0x1000, Devices.FwCfg.DmaRead, 16, 0x20000));
        Assert.True(Ram(0x20000, 16).SequenceEqual(new byte[16]));
    }

    [Fact]
    public void DmaOutsideGuestRamSetsErrorAndTouchesNothing()
    {
        ushort sel = _fw.AddFile("etc/e820", new byte[40]);
        uint ctl = Dma(0x1000, (uint)sel << 16 | Devices.FwCfg.DmaSelect | Devices.FwCfg.DmaRead, 40, 0xfee0_0000);
        Assert.Equal(Devices.FwCfg.DmaError, ctl & Devices.FwCfg.DmaError);
        // A buffer that runs off the end of RAM: error, and the part inside RAM is left alone.
        ulong end = 16ul << 20;
        Ram(end - 8, 8).Fill(0x77);
        ctl = Dma(0x1000, (uint)sel << 16 | Devices.FwCfg.DmaSelect | Devices.FwCfg.DmaRead, 40, end - 8);
        Assert.Equal(Devices.FwCfg.DmaError, ctl & Devices.FwCfg.DmaError);
        Assert.True(Ram(end - 8, 8).ToArray().All(b => b == 0x77));
        // An address that wraps around the top of the address space.
        ctl = Dma(0x1000, (uint)sel << 16 | Devices.FwCfg.DmaSelect | Devices.FwCfg.DmaRead, 40, ulong.MaxValue - 4);
        Assert.Equal(Devices.FwCfg.DmaError, ctl & Devices.FwCfg.DmaError);
        // A descriptor outside RAM is ignored without a trace.
        _ports.Write(0x514, 4, 0);
        _ports.Write(0x518, 4, BinaryPrimitives.ReverseEndianness(0xfee0_0000u));
    }

    [Fact]
    public void DmaWriteIsRefused()
    {
        ushort sel = _fw.AddFile("opt/x", new byte[8]);
        uint ctl = Dma(0x1000, (uint)sel << 16 | Devices.FwCfg.DmaSelect | Devices.FwCfg.DmaWrite, 8, 0x3000);
        Assert.Equal(Devices.FwCfg.DmaError, ctl);
        Assert.Equal(new byte[8], _fw.GetFile("opt/x"));
    }

    [Fact]
    public void SelectAndSkipThenReadOnThroughTheDataPort()
    {
        ushort sel = _fw.AddFile("opt/abc", "0123456789"u8.ToArray());
        Ram(0x4000, 8).Fill(0x11);
        uint ctl = Dma(0x1000, (uint)sel << 16 | Devices.FwCfg.DmaSelect | Devices.FwCfg.DmaSkip, 4, 0x4000);
        Assert.Equal(0u, ctl);
        Assert.True(Ram(0x4000, 8).ToArray().All(b => b == 0x11)); // skip writes nothing
        Assert.Equal((uint)'4', _ports.Read(0x511, 1));
        Assert.Equal((uint)'5', _ports.Read(0x511, 1));
    }

    [Fact]
    public void E820ItemEncodesEntries()
    {
        var e820 = FwCfgItems.E820([new(0, 0x9fc00, 1), new(0x100000, 0xff00000, 1), new(0xe0000000, 0x10000000, 2)]);
        ushort sel = _fw.AddFile(FwCfgItems.E820File, e820);
        Assert.Equal(60, e820.Length);
        Assert.Equal(0u, Dma(0x1000, (uint)sel << 16 | Devices.FwCfg.DmaSelect | Devices.FwCfg.DmaRead, 60, 0x8000));
        var r = Ram(0x8000, 60);
        Assert.Equal(0x100000ul, BinaryPrimitives.ReadUInt64LittleEndian(r[20..]));
        Assert.Equal(0xff00000ul, BinaryPrimitives.ReadUInt64LittleEndian(r[28..]));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(r[36..]));
        Assert.Equal(0xe0000000ul, BinaryPrimitives.ReadUInt64LittleEndian(r[40..]));
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(r[56..]));
    }

    [Fact]
    public void SerconPortIsCom1WhenTheSerialIsTheConsole()
    {
        FwCfgItems.AddSerialConsole(_fw, com1IsConsole: true, hasDisplay: true);
        Assert.Null(_fw.GetFile(FwCfgItems.SerconPortFile));
        FwCfgItems.AddSerialConsole(_fw, com1IsConsole: true, hasDisplay: false);
        var sel = _fw.Files.Single(f => f.Name == "etc/sercon-port").Selector;
        Assert.Equal(0x3f8, BinaryPrimitives.ReadUInt16LittleEndian(ReadItem(sel, 2)));
    }

    [Fact]
    public void NumericItems()
    {
        _fw.SetRamSize(16ul << 20);
        _fw.SetCpus(2, 4);
        Assert.Equal(16ul << 20, BinaryPrimitives.ReadUInt64LittleEndian(ReadItem(0x0003, 8)));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(ReadItem(0x0005, 2)));
        Assert.Equal(4, BinaryPrimitives.ReadUInt16LittleEndian(ReadItem(0x000f, 2)));
        // An item that does not exist reads as zeros.
        Assert.Equal(new byte[4], ReadItem(0x0123, 4));
    }

    [Fact]
    public void UserItemsFromStringsAndFiles()
    {
        _fw.AddUserItem("opt/com.example/s,string=hello world");
        Assert.Equal("hello world", Encoding.UTF8.GetString(_fw.GetFile("opt/com.example/s")!));
        string path = Path.GetTempFileName();
        try
        {
            File.WriteAllBytes(path, [1, 2, 3]);
            _fw.AddUserItem($"opt/com.example/f,file={path}");
            Assert.Equal(new byte[] { 1, 2, 3 }, _fw.GetFile("opt/com.example/f"));
        }
        finally { File.Delete(path); }
        Assert.Throws<HostConfigException>(() => _fw.AddUserItem("opt/x"));
        Assert.Throws<HostConfigException>(() => _fw.AddUserItem("opt/x,blob=1"));
        Assert.Throws<HostConfigException>(() => _fw.AddUserItem("opt/x,file=/nonexistent/hyve/file"));
        Assert.Throws<HostConfigException>(() => _fw.AddUserItem(new string('a', 56) + ",string=x"));
    }

    [Fact]
    public void BootOrderIsNewlineSeparatedAndTerminated()
    {
        var b = FwCfgItems.BootOrder(["/pci@i0cf8/ide@1,1/drive@0/disk@0", "HALT"]);
        Assert.Equal("/pci@i0cf8/ide@1,1/drive@0/disk@0\nHALT\0", Encoding.ASCII.GetString(b));
    }

    [Fact]
    public void RandomGuestAccessesNeverThrow()
    {
        _fw.AddFile("opt/a", new byte[100]);
        var rnd = new Random(11);
        for (int i = 0; i < 5000; i++)
        {
            ushort port = (ushort)(0x510 + rnd.Next(0, 12));
            int size = 1 << rnd.Next(0, 3);
            if (rnd.Next(2) == 0) _ports.Write(port, size, (uint)rnd.Next());
            else _ports.Read(port, size);
        }
        // Random descriptors inside RAM with random contents.
        for (int i = 0; i < 200; i++)
        {
            var d = Ram(0x1000, 16);
            rnd.NextBytes(d);
            _ports.Write(0x514, 4, 0);
            _ports.Write(0x518, 4, BinaryPrimitives.ReverseEndianness(0x1000u));
        }
    }
}
