// SPDX-License-Identifier: BSD-2-Clause
using System.Text;
using Hyve.X86;

namespace Hyve.Gdb;

/// <summary>
/// The register file the GDB server offers, in the order of its target description: gdb's
/// org.gnu.gdb.i386.core for amd64 (general registers, rip, eflags, selectors, then the x87 block gdb requires),
/// org.gnu.gdb.i386.sse, org.gnu.gdb.i386.segments (fs_base, gs_base) and hyve's own system-register feature.
/// The x87 and SSE registers read as their reset values and ignore writes: the VMM API does not expose them.
/// </summary>
public static class GdbRegisters
{
    /// <summary>What one gdb register number is backed by.</summary>
    public enum Kind
    {
        /// <summary>A VMM register read and written whole.</summary>
        Vmm,
        /// <summary>A segment register's hidden base (fs_base, gs_base).</summary>
        SegmentBase,
        /// <summary>No backing register: reads a constant, writes are ignored.</summary>
        Constant,
    }

    /// <summary>One register: gdb name, size in bytes, and what backs it.</summary>
    public readonly record struct Entry(string Name, int Size, Kind Kind, Reg Reg, ulong Constant, string Type, string Group);

    /// <summary>All registers in gdb numbering.</summary>
    public static IReadOnlyList<Entry> All { get; } = Build();

    /// <summary>Total bytes of a 'g' reply.</summary>
    public static int TotalSize { get; } = SumSizes();

    private static Entry[] Build()
    {
        var l = new List<Entry>();
        void Vmm(string n, int size, Reg r, string type = "int", string group = "general") => l.Add(new(n, size, Kind.Vmm, r, 0, type, group));
        void Const(string n, int size, ulong v, string type, string group) => l.Add(new(n, size, Kind.Constant, default, v, type, group));
        Vmm("rax", 8, Reg.Rax, "int64"); Vmm("rbx", 8, Reg.Rbx, "int64"); Vmm("rcx", 8, Reg.Rcx, "int64"); Vmm("rdx", 8, Reg.Rdx, "int64");
        Vmm("rsi", 8, Reg.Rsi, "int64"); Vmm("rdi", 8, Reg.Rdi, "int64"); Vmm("rbp", 8, Reg.Rbp, "data_ptr"); Vmm("rsp", 8, Reg.Rsp, "data_ptr");
        Vmm("r8", 8, Reg.R8, "int64"); Vmm("r9", 8, Reg.R9, "int64"); Vmm("r10", 8, Reg.R10, "int64"); Vmm("r11", 8, Reg.R11, "int64");
        Vmm("r12", 8, Reg.R12, "int64"); Vmm("r13", 8, Reg.R13, "int64"); Vmm("r14", 8, Reg.R14, "int64"); Vmm("r15", 8, Reg.R15, "int64");
        Vmm("rip", 8, Reg.Rip, "code_ptr");
        Vmm("eflags", 4, Reg.Rflags, "i386_eflags");
        Vmm("cs", 4, Reg.Cs, "int32"); Vmm("ss", 4, Reg.Ss, "int32"); Vmm("ds", 4, Reg.Ds, "int32");
        Vmm("es", 4, Reg.Es, "int32"); Vmm("fs", 4, Reg.Fs, "int32"); Vmm("gs", 4, Reg.Gs, "int32");
        for (int i = 0; i < 8; i++) Const($"st{i}", 10, 0, "i387_ext", "float");
        Const("fctrl", 4, 0x37f, "int", "float"); Const("fstat", 4, 0, "int", "float"); Const("ftag", 4, 0xffff, "int", "float");
        Const("fiseg", 4, 0, "int", "float"); Const("fioff", 4, 0, "int", "float"); Const("foseg", 4, 0, "int", "float");
        Const("fooff", 4, 0, "int", "float"); Const("fop", 4, 0, "int", "float");
        for (int i = 0; i < 16; i++) Const($"xmm{i}", 16, 0, "vec128", "vector");
        Const("mxcsr", 4, 0x1f80, "i386_mxcsr", "vector");
        l.Add(new("fs_base", 8, Kind.SegmentBase, Reg.Fs, 0, "int", "system"));
        l.Add(new("gs_base", 8, Kind.SegmentBase, Reg.Gs, 0, "int", "system"));
        Vmm("cr0", 8, Reg.Cr0, "int", "system"); Vmm("cr2", 8, Reg.Cr2, "int", "system"); Vmm("cr3", 8, Reg.Cr3, "int", "system");
        Vmm("cr4", 8, Reg.Cr4, "int", "system"); Vmm("cr8", 8, Reg.Cr8, "int", "system"); Vmm("efer", 8, Reg.Efer, "int", "system");
        return [.. l];
    }

    private static int SumSizes()
    {
        int n = 0;
        foreach (var e in All) n += e.Size;
        return n;
    }

    /// <summary>First register number of each feature in <see cref="All"/>.</summary>
    private const int FirstSse = 40, FirstSegments = 57, FirstSystem = 59;

    /// <summary>The target description gdb reads with qXfer:features:read:target.xml.</summary>
    public static string TargetXml { get; } = BuildXml();

    private static string BuildXml()
    {
        var sb = new StringBuilder();
        sb.Append("<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n");
        sb.Append("<architecture>i386:x86-64</architecture>\n");
        sb.Append("<feature name=\"org.gnu.gdb.i386.core\">\n");
        // gdb's own flag types for eflags, as its 64bit-core.xml declares them.
        sb.Append("<flags id=\"i386_eflags\" size=\"4\">");
        string[] flags = ["CF", "", "PF", "AF", "ZF", "SF", "TF", "IF", "DF", "OF", "NT", "RF", "VM", "AC", "VIF", "VIP", "ID"];
        int[] bits = [0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 14, 16, 17, 18, 19, 20, 21];
        for (int i = 0; i < flags.Length; i++) sb.Append($"<field name=\"{flags[i]}\" start=\"{bits[i]}\" end=\"{bits[i]}\"/>");
        sb.Append("</flags>\n");
        for (int i = 0; i < FirstSse; i++) AppendReg(sb, i);
        sb.Append("</feature>\n<feature name=\"org.gnu.gdb.i386.sse\">\n");
        sb.Append("<vector id=\"v8bf16\" type=\"bfloat16\" count=\"8\"/><vector id=\"v4f\" type=\"ieee_single\" count=\"4\"/>");
        sb.Append("<vector id=\"v2d\" type=\"ieee_double\" count=\"2\"/><vector id=\"v16i8\" type=\"int8\" count=\"16\"/>");
        sb.Append("<vector id=\"v8i16\" type=\"int16\" count=\"8\"/><vector id=\"v4i32\" type=\"int32\" count=\"4\"/>");
        sb.Append("<vector id=\"v2i64\" type=\"int64\" count=\"2\"/>");
        sb.Append("<union id=\"vec128\"><field name=\"v4_float\" type=\"v4f\"/><field name=\"v2_double\" type=\"v2d\"/>");
        sb.Append("<field name=\"v16_int8\" type=\"v16i8\"/><field name=\"v8_int16\" type=\"v8i16\"/><field name=\"v4_int32\" type=\"v4i32\"/>");
        sb.Append("<field name=\"v2_int64\" type=\"v2i64\"/><field name=\"uint128\" type=\"uint128\"/></union>\n");
        sb.Append("<flags id=\"i386_mxcsr\" size=\"4\">");
        string[] mx = ["IE", "DE", "ZE", "OE", "UE", "PE", "DAZ", "IM", "DM", "ZM", "OM", "UM", "PM", "FZ"];
        for (int i = 0; i < mx.Length; i++) sb.Append($"<field name=\"{mx[i]}\" start=\"{i + (i == 13 ? 2 : 0)}\" end=\"{i + (i == 13 ? 2 : 0)}\"/>");
        sb.Append("</flags>\n");
        for (int i = FirstSse; i < FirstSegments; i++) AppendReg(sb, i);
        sb.Append("</feature>\n<feature name=\"org.gnu.gdb.i386.segments\">\n");
        for (int i = FirstSegments; i < FirstSystem; i++) AppendReg(sb, i);
        sb.Append("</feature>\n<feature name=\"org.hyve.x86.system\">\n");
        for (int i = FirstSystem; i < All.Count; i++) AppendReg(sb, i);
        sb.Append("</feature>\n</target>\n");
        return sb.ToString();
    }

    private static void AppendReg(StringBuilder sb, int n)
    {
        var e = All[n];
        sb.Append($"<reg name=\"{e.Name}\" bitsize=\"{e.Size * 8}\" type=\"{e.Type}\" regnum=\"{n}\"");
        if (e.Group != "general") sb.Append($" group=\"{e.Group}\"");
        sb.Append("/>\n");
    }
}
