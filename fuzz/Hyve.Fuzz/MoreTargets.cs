// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Devices;
using Hyve.Virtio;
using Hyve.Vmm;
using Hyve.Vmm.State;
using Hyve.X86;
using GuestMemory = Hyve.Vmm.GuestMemory;

namespace Hyve.Fuzz;

/// <summary>
/// The fuzz targets for guest-facing parsers (the instruction engine, virtqueues, fw_cfg DMA) and the snapshot loader.
/// Shared with the test suite, which replays each corpus through the same code (FuzzCorpusTests). A target returns
/// normally for every input, or throws only what the caller reports as a host mistake in one line.
/// </summary>
public static class MoreTargets
{
    /// <summary>Target name to its body.</summary>
    public static readonly Dictionary<string, Action<byte[]>> All = new()
    {
        ["engine"] = Engine,
        ["virtqueue"] = VirtqueueChains,
        ["fwcfg"] = FwCfgDma,
        ["snapshot"] = Snapshot,
        ["acpi"] = AcpiTarget.Run,
    };

    /// <summary>Exceptions a target may end with: the ones hyve turns into one line and status 4.</summary>
    public static bool IsHostError(Exception e) => e is SnapshotFormatException;

    /// <summary>The line every file kept in fuzz/corpus begins with (the project's licence line), which is not part of
    /// the input: <see cref="Payload"/> strips it before a target sees the bytes, under AFL and in the replay alike.</summary>
    public static ReadOnlySpan<byte> CorpusHeader => "# SPDX-License-Identifier: BSD-2-Clause\n"u8;

    /// <summary>The input a corpus file holds: its bytes without a leading <see cref="CorpusHeader"/>.</summary>
    public static byte[] Payload(byte[] file) => file.AsSpan().StartsWith(CorpusHeader) ? file[CorpusHeader.Length..] : file;

    // ---- the instruction engine -------------------------------------------------------------------------------

    /// <summary>Flat RAM for the engine: 2 MiB, with one MMIO page at 0x1f0000 that reads back what was written.</summary>
    private sealed class FlatMemory : IGuestPhysicalMemory
    {
        public readonly byte[] Ram = new byte[2 << 20];
        private ulong _mmio;

        public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
        {
            if (length >= 0 && gpa < 0x1f0000 && (ulong)length <= 0x1f0000 - gpa) { span = Ram.AsSpan((int)gpa, length); return true; }
            span = default;
            return false;
        }

        public bool TryReadMmio(ulong gpa, int size, out ulong value)
        {
            value = _mmio;
            return gpa >= 0x1f0000 && gpa < 0x200000;
        }

        public bool TryWriteMmio(ulong gpa, int size, ulong value)
        {
            _mmio = value;
            return gpa >= 0x1f0000 && gpa < 0x200000;
        }
    }

    private sealed class Ports : IGuestPorts
    {
        public uint In(ushort port, int size) => 0xffffffff;
        public void Out(ushort port, int size, uint value) { }
    }

    private static FlatMemory? _engineMemory;

    /// <summary>
    /// Byte 0 picks the mode (real, 32-bit protected flat, 32-bit paged, 64-bit long mode), byte 1 the starting flags;
    /// the rest is code at 0x1000, executed for up to 64 instructions with exceptions delivered through an IDT/IVT of
    /// zeros. The engine must never throw: every bad encoding, operand or access is a guest-visible exception.
    /// </summary>
    public static void Engine(byte[] data)
    {
        if (data.Length < 2) return;
        var mem = _engineMemory ??= new FlatMemory();
        Array.Clear(mem.Ram);
        var engine = new InstructionEngine(mem) { MaxRepIterations = 4096 };
        var cpu = new CpuState();
        switch (data[0] & 3)
        {
            case 0: break; // real mode at reset, CS base 0xffff0000 adjusted below
            case 1: cpu.SetFlatProtectedMode(); break;
            case 2:
                // 32-bit paging: one 4 MiB PSE page at 0 (CR4.PSE), identity.
                BinaryPrimitives.WriteUInt32LittleEndian(mem.Ram.AsSpan(0x10000), 0x83 | 0x04);
                cpu.SetFlatProtectedMode(cr0Pg: true, cr3: 0x10000, cr4: 0x10);
                break;
            case 3:
                BinaryPrimitives.WriteUInt64LittleEndian(mem.Ram.AsSpan(0x10000), 0x11000 | 7);
                BinaryPrimitives.WriteUInt64LittleEndian(mem.Ram.AsSpan(0x11000), 0x12000 | 7);
                BinaryPrimitives.WriteUInt64LittleEndian(mem.Ram.AsSpan(0x12000), 0x87); // 2 MiB identity page
                cpu.SetFlatLongMode(0x10000);
                break;
        }
        if ((data[0] & 3) == 0)
        {
            cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        }
        cpu.Rip = 0x1000;
        cpu.Gpr[4] = 0x8000;
        cpu.Rflags = 0x2u | (ulong)(data[1] & 0xd5) | ((ulong)(data[1] & 0x20) << 5); // arithmetic flags and DF
        int n = Math.Min(data.Length - 2, 0x4000);
        data.AsSpan(2, n).CopyTo(mem.Ram.AsSpan(0x1000));
        var ports = new Ports();
        for (int i = 0; i < 64; i++)
        {
            var r = engine.Step(cpu, ports);
            if (r.IsOk) continue;
            if (r.Status != StepStatus.Exception) break;
            // A fault: deliver it as the CPU would; a double or triple fault ends the run.
            if (!engine.Deliver(cpu, r.Exception).IsOk) break;
        }
    }

    // ---- virtqueues -------------------------------------------------------------------------------------------

    private static GuestMemory? _queueMemory;

    /// <summary>
    /// A hostile driver's split virtqueue: byte 0 picks the size (1..256, any value: a size that is not a power of two
    /// is the transport's to refuse, so it is rounded here), byte 1 the features (indirect, event index) and the ring
    /// addresses' alignment; the rest fills guest memory from 0 (descriptor table at 0, driver ring at 0x1000, device
    /// ring at 0x2000; descriptors may point anywhere, including past the end of RAM). The device pops every chain,
    /// reads its readable part and fills its writable part, as a device does.
    /// </summary>
    public static void VirtqueueChains(byte[] data)
    {
        if (data.Length < 2) return;
        var mem = _queueMemory ??= new GuestMemory(1ul << 20);
        if (!mem.TryGetSpan(0, 0x10000, MemProt.Write, out var low)) return;
        low.Clear();
        data.AsSpan(2, Math.Min(data.Length - 2, 0x10000)).CopyTo(low);
        var q = new Virtqueue(mem, 0, 256);
        q.Size = (ushort)(1 << (data[0] % 9));
        q.IndirectDesc = (data[1] & 1) != 0;
        q.EventIdx = (data[1] & 2) != 0;
        q.Desc = (data[1] & 4) != 0 ? 0x8ul : 0ul;      // misaligned when asked
        q.Driver = 0x1000 + (ulong)((data[1] >> 3) & 1);
        q.Device = (data[1] & 0x10) != 0 ? 0xfffff000 : 0x2000; // outside RAM when asked
        q.Enabled = true;
        if (!q.CheckRings()) return;
        Span<byte> buf = stackalloc byte[512];
        for (int i = 0; i < 300; i++)
        {
            ushort used = q.UsedIdx;
            var r = q.Pop();
            if (r != PopResult.Chain) break;
            var c = q.Chain;
            c.ReadReadable(0, buf);
            c.ReadReadable(c.ReadableBytes / 2, buf);
            int w = c.WriteWritable(0, buf);
            for (int k = 0; k < c.Count; k++) c.TryGetSpan(k, out _);
            q.Push(c.Head, (uint)w);
            q.NeedsInterrupt(used);
        }
    }

    // ---- fw_cfg DMA -------------------------------------------------------------------------------------------

    private static GuestMemory? _fwMemory;

    /// <summary>
    /// fw_cfg's DMA interface driven by a hostile guest: the input is guest memory from 0 (DMA descriptors there, and
    /// anything they point at), followed by a list of 4-byte descriptor addresses written to the DMA port (high half
    /// 0, so the address is the input's). Selector and data-port accesses are mixed in by the address's top bits.
    /// </summary>
    public static void FwCfgDma(byte[] data)
    {
        var mem = _fwMemory ??= new GuestMemory(1ul << 20);
        if (!mem.TryGetSpan(0, 0x2000, MemProt.Write, out var low)) return;
        low.Clear();
        int split = Math.Min(data.Length, 0x2000);
        if (data.Length > 0) split = Math.Min(split, 1 + data[0] * 16);
        data.AsSpan(0, split).CopyTo(low);
        var fw = new FwCfg(mem);
        fw.AddFile("etc/fuzz", [1, 2, 3, 4, 5, 6, 7, 8]);
        fw.AddFile("opt/writable", new byte[64]);
        for (int i = split; i + 4 <= data.Length; i += 4)
        {
            uint v = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(i));
            switch (v >> 30)
            {
                case 0:
                    fw.PortWrite(FwCfg.DmaPort, 4, 0);
                    fw.PortWrite(FwCfg.DmaPort + 4, 4, BinaryPrimitives.ReverseEndianness(v));
                    break;
                case 1: fw.PortWrite(FwCfg.SelectorPort, 2, v & 0xffff); break;
                case 2: fw.PortRead(FwCfg.DataPort, 1); break;
                case 3:
                    // A DMA address with a high half (beyond any RAM).
                    fw.PortWrite(FwCfg.DmaPort, 4, BinaryPrimitives.ReverseEndianness(v));
                    fw.PortWrite(FwCfg.DmaPort + 4, 4, 0);
                    break;
            }
        }
    }

    // ---- snapshot files ---------------------------------------------------------------------------------------

    private static string? _snapshotPath;

    /// <summary>A snapshot file as -r opens it: the header, manifest and every section are checked before use; a
    /// bad file is a <see cref="SnapshotFormatException"/> (one line, status 4), never another exception. The input is
    /// the file with runs of zeros (guest memory) written as "HZ\xff" and a 32-bit length, so that a whole snapshot
    /// fits AFL's 1 MiB input limit.</summary>
    public static void Snapshot(byte[] data)
    {
        _snapshotPath ??= Path.Combine(Path.GetTempPath(), $"hyve-fuzz-snap-{Environment.ProcessId}");
        using (var f = new FileStream(_snapshotPath, FileMode.Create, FileAccess.Write))
        {
            int start = 0;
            for (int i = 0; i + 7 <= data.Length; i++)
            {
                if (data[i] != (byte)'H' || data[i + 1] != (byte)'Z' || data[i + 2] != 0xff) continue;
                f.Write(data, start, i - start);
                uint zeros = Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(i + 3)), 64u << 20);
                if (f.Length + zeros > 256L << 20) return; // keep the file small: a bigger one says nothing new
                f.Seek(zeros, SeekOrigin.Current);
                f.SetLength(Math.Max(f.Length, f.Position));
                start = i + 7;
                i += 6;
            }
            f.Write(data, start, data.Length - start);
        }
        using var r = SnapshotReader.Open(_snapshotPath);
        r.ReadSections();
    }
}
