// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Soft;
using Hyve.Vmm.Control;
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.Soft;

/// <summary>The software CPU's own parts. Guests in process on every engine: Machine/InProcessVmTests; random code:
/// RandomCodeTests.</summary>
public class SoftCpuTests
{
    [Fact]
    public void CpuidReportsTheTopologyAndApicId()
    {
        var t = new CpuTopology(2, 2, 2, 8);
        var cpu = new CpuState();
        var id5 = new SoftCpuid(t, 5);
        var l1 = id5.Query(cpu, 1, 0);
        Assert.Equal(t.ApicId(5), l1.Ebx >> 24);
        Assert.Equal(4u, (l1.Ebx >> 16) & 0xff); // logical processors per package
        Assert.NotEqual(0u, l1.Edx & (1u << 28)); // HTT
        var smt = id5.Query(cpu, 0xb, 0);
        Assert.Equal((1u, 2u, 1u << 8, t.ApicId(5)), (smt.Eax, smt.Ebx, smt.Ecx, smt.Edx));
        var core = id5.Query(cpu, 0xb, 1);
        Assert.Equal((2u, 4u), (core.Eax, core.Ebx));
        Assert.Equal(1u, id5.Query(cpu, 4, 0).Eax >> 26); // cores per package - 1
    }
}
