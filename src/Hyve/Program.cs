// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve;

/// <summary>The hyve executable's entry point.</summary>
public static class Program
{
    /// <summary>Runs hyve with bhyve(8)'s command line.</summary>
    public static int Main(string[] args) => 4;
}
