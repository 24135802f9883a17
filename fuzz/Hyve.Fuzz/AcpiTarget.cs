// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Acpi;
using Hyve.Config;
using Hyve.Pci;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Options = Hyve.Config.Options;

namespace Hyve.Fuzz;

/// <summary>
/// The "acpi" fuzz target: table generation from odd machines. The input is a command line (NUL-separated arguments,
/// as the options target reads it) whose topology (-c), PCI slots (-s) and COM ports (-l) become the machine's
/// <see cref="PlatformDescription"/> as <c>PcPlatform</c> builds it; after a second NUL pair, optional bytes vary what
/// the command line cannot (IOAPIC pins, ECAM bus range, HPET, VGA). Whatever the options accept must give tables a
/// firmware and an OS can use, so besides "nothing throws" the target checks what the specifications require and
/// throws <see cref="TableInvariantException"/> (a crash to AFL) when one is broken.
/// </summary>
public static class AcpiTarget
{
    /// <summary>A generated table breaks a rule of the ACPI, MP or SMBIOS specification, or of the xAPIC.</summary>
    public sealed class TableInvariantException(string message) : Exception(message);

    /// <summary>Runs one input.</summary>
    public static void Run(byte[] data)
    {
        int split = data.AsSpan().IndexOf("\0\0"u8);
        var args = Encoding.UTF8.GetString(split < 0 ? data : data[..split]).Split('\0');
        var extra = split < 0 ? [] : data.AsSpan(split + 2);
        var parsed = Options.Parse(args);
        if (parsed.Error is not null || parsed.ShowHelp || parsed.DumpConfig) return;
        var d = Describe(parsed, extra);

        var tables = AcpiTables.Build(d);
        CheckMadt(tables, d);
        foreach (var table in tables) CheckHeader(table);
        var fw = AcpiLayout.ForFwCfg(tables);
        if (fw.TableLoader.Length % AcpiLayout.CommandSize != 0) Fail("table-loader is not whole 128-byte commands");

        // Direct kernel boot: the MP, SMBIOS and ACPI tables must all fit the BIOS area of a small guest.
        var t = parsed.Topology;
        using var mem = new GuestMemory(16ul << 20);
        var smbios = SmbiosTables.Build(new SmbiosDescription(Guid.Empty, t.Sockets, t.Cores, t.Threads, mem.LowMemSize, mem.HighMemSize, "GenuineIntel"));
        var placed = BiosTables.Install(mem, d, smbios);
        if (!mem.TryGetSpan(placed.AcpiBase, placed.AcpiLength, MemProt.Read, out var image)) Fail("ACPI image outside RAM");
        CheckPlacedChecksums(image.ToArray(), placed);
        if (placed.MpLength > 0 && mem.TryGetSpan(placed.MpBase, placed.MpLength, MemProt.Read, out var mp)) CheckMp(mp, d);
    }

    // The description PcPlatform.Describe makes, from the options alone: INTx routes are requested per configured
    // function as the PCI devices do (pin A for function 0, then B, C, D), through the real router.
    private static PlatformDescription Describe(ParseResult parsed, ReadOnlySpan<byte> extra)
    {
        var t = parsed.Topology;
        var topo = new CpuTopology(t.Sockets, t.Cores, t.Threads, t.MaxCpus);
        var ids = new uint[t.Cpus];
        for (int i = 0; i < ids.Length; i++) ids[i] = topo.ApicId(i);
        int pins = extra.Length > 0 ? 24 + extra[0] % 97 : 32; // the IOAPIC has at least 24 pins and at most 120
        var router = new PciIntxRouter(() => null, pins);
        var config = parsed.Config;
        bool lpc = false;
        foreach (var b in config.ChildNames("pci"))
            foreach (var s in config.ChildNames($"pci.{b}"))
                foreach (var f in config.ChildNames($"pci.{b}.{s}"))
                {
                    string? dev = config.Get($"pci.{b}.{s}.{f}.device");
                    if (dev is null || !int.TryParse(b, out int bus) || !int.TryParse(s, out int slot) || !int.TryParse(f, out int fn)) continue;
                    if (dev == "lpc") lpc = true;
                    router.Route(bus, slot, 1 + fn % 4);
                }
        var routes = new List<IntxRoute>();
        foreach (var r in router.Routes) routes.Add(new IntxRoute(r.Bus, r.Slot, r.Pin, r.IoapicPin, r.Pirq));
        var coms = new List<LegacyComPort>();
        var table = Devices.Uart16550.ComPorts;
        for (int i = 0; i < table.Count; i++)
            if (config.Get($"lpc.{table[i].Name}.path") is not null) coms.Add(new LegacyComPort(i + 1, table[i].Base, (byte)table[i].Irq));
        byte endBus = extra.Length > 1 ? extra[1] : (byte)255;
        byte flags = extra.Length > 2 ? extra[2] : (byte)1;
        return PlatformDescription.ForCpus(t.Cpus) with
        {
            ApicIds = ids,
            IoApicPins = pins,
            EcamEndBus = endBus,
            HasHpet = (flags & 1) != 0,
            HasVga = (flags & 2) != 0,
            HasLpc = lpc,
            IntxRoutes = routes,
            ComPorts = coms,
            PciMmio64Window = new AddressWindow(0x1_0000_0000, 0x7f_ffff_ffff),
        };
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void Fail(string why) => throw new TableInvariantException(why);

    // Every table (ACPI 6.5 5.2.6): a 36-byte header whose Length is the table's size; the RSDP has its own layout.
    private static void CheckHeader(AcpiTable t)
    {
        if (t.Signature == AcpiTables.RsdpSignature) return;
        if (t.Bytes.Length < TableWriter.HeaderSize) Fail($"{t.Signature}: shorter than a header");
        if (Encoding.ASCII.GetString(t.Bytes, 0, 4) != t.Signature) Fail($"{t.Signature}: signature field differs");
        if (BinaryPrimitives.ReadUInt32LittleEndian(t.Bytes.AsSpan(4)) != (uint)t.Bytes.Length) Fail($"{t.Signature}: Length is not the table's size");
    }

    // The MADT (5.2.12) names every vCPU once: a Processor Local APIC entry (type 0) for IDs up to 254 and a Local x2APIC
    // entry (type 9) above; and since the modelled CPUs start in xAPIC mode, whose ID register holds 8 bits, no ID may
    // be above 254 (255 is the broadcast ID) or two CPUs would answer to the same one.
    private static void CheckMadt(IReadOnlyList<AcpiTable> tables, PlatformDescription d)
    {
        var madt = tables.FirstOrDefault(x => x.Signature == "APIC") ?? throw new TableInvariantException("no MADT");
        var seen = new HashSet<uint>();
        var b = madt.Bytes;
        for (int p = TableWriter.HeaderSize + 8; p < b.Length;)
        {
            if (p + 2 > b.Length || b[p + 1] < 2 || p + b[p + 1] > b.Length) Fail($"MADT entry at {p} overruns the table");
            uint id = b[p] switch { 0 => b[p + 3], 9 => BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(p + 4)), _ => uint.MaxValue };
            if (id != uint.MaxValue && !seen.Add(id)) Fail($"MADT names APIC ID {id} twice");
            p += b[p + 1];
        }
        if (seen.Count != d.CpuCount) Fail($"MADT names {seen.Count} processors for {d.CpuCount} vCPUs");
        foreach (var id in d.ApicIds)
            if (id > 254) Fail($"APIC ID {id} does not fit the xAPIC's 8-bit ID register");
    }

    // After placement every table's bytes sum to zero (the RSDP: its first 20 bytes and, with revision 2, all 36).
    private static void CheckPlacedChecksums(byte[] image, InstalledTables placed)
    {
        int rsdp = (int)(placed.RsdpAddress - placed.AcpiBase);
        if (Sum(image.AsSpan(rsdp, 20)) != 0 || Sum(image.AsSpan(rsdp, 36)) != 0) Fail("RSDP checksum");
        var seen = new HashSet<ulong>();
        var todo = new Stack<ulong>();
        todo.Push(BinaryPrimitives.ReadUInt64LittleEndian(image.AsSpan(rsdp + 24))); // the XSDT
        while (todo.TryPop(out ulong address))
        {
            if (!seen.Add(address)) continue;
            long off = (long)address - (long)placed.AcpiBase;
            if (off < 0 || off + TableWriter.HeaderSize > image.Length) Fail($"a pointer (0x{address:x}) leaves the ACPI area");
            int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(image.AsSpan((int)off + 4));
            if (len < TableWriter.HeaderSize || off + len > image.Length) Fail($"table at 0x{address:x} overruns the ACPI area");
            var body = image.AsSpan((int)off, len);
            string sig = Encoding.ASCII.GetString(body[..4]);
            if (Sum(body) != 0) Fail($"{sig} at 0x{address:x}: checksum");
            if (sig == "XSDT")
                for (int p = TableWriter.HeaderSize; p + 8 <= len; p += 8) todo.Push(BinaryPrimitives.ReadUInt64LittleEndian(body[p..]));
            if (sig == "FACP" && len >= 148)
            {
                ulong dsdt = BinaryPrimitives.ReadUInt64LittleEndian(body[140..]); // X_DSDT, else the 32-bit DSDT
                todo.Push(dsdt != 0 ? dsdt : BinaryPrimitives.ReadUInt32LittleEndian(body[40..]));
            }
        }
    }

    // MP 1.4: the configuration table's bytes sum to zero and its entry count is what follows; one processor entry per
    // vCPU whose APIC ID fits in 8 bits.
    private static void CheckMp(ReadOnlySpan<byte> mp, PlatformDescription d)
    {
        if (Sum(mp[..16]) != 0) Fail("MP floating pointer checksum");
        int cfg = 16;
        int len = BinaryPrimitives.ReadUInt16LittleEndian(mp[(cfg + 4)..]);
        if (cfg + len > mp.Length || Sum(mp.Slice(cfg, len)) != 0) Fail("MP configuration table checksum or length");
        int entries = BinaryPrimitives.ReadUInt16LittleEndian(mp[(cfg + 34)..]);
        int cpus = 0;
        for (int p = cfg + 44, k = 0; k < entries; k++)
        {
            if (p >= cfg + len) Fail("MP entry count runs past the table");
            if (mp[p] == 0) cpus++;
            p += mp[p] == 0 ? 20 : 8;
        }
        if (cpus != d.ApicIds.Count(id => id <= 0xff)) Fail($"MP table lists {cpus} processors");
    }

    private static byte Sum(ReadOnlySpan<byte> s)
    {
        byte x = 0;
        foreach (byte b in s) x += b;
        return x;
    }
}
